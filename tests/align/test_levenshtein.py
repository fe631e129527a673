"""Levenshtein distance: native bit-parallel kernel against two independent implementations."""
import editdistance
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rapidfuzz.distance import Levenshtein as RFLevenshtein

from fusekernels.align import levenshtein, levenshtein_batch

# Characters that stress the code-point handling: ASCII, Latin-1, the two tokenizer space markers,
# CJK, emoji (outside the BMP), combining marks, byte-level BPE characters, a lone surrogate.
TRICKY = "abcAB Ĝ\u00e9\u00ff\u0120\u2581\u010a\u4f60\u597d\u8bed\U0001F600\U0001F680\u0301\u0308\ud800"
tricky_text = st.text(alphabet=TRICKY, max_size=40)
small_alphabet_text = st.text(alphabet="ab\u4f60\U0001F600", max_size=20)
# Long strings cross the 64- and 128-code-point block boundaries of the multi-word kernel.
long_text = st.text(alphabet="abc\u2581\u4f60\U0001F600", min_size=50, max_size=260)
any_text = st.one_of(tricky_text, small_alphabet_text, long_text, st.text(max_size=30))


def reference(a: str, b: str) -> int:
    return RFLevenshtein.distance(a, b)


@settings(max_examples=300, deadline=None)
@given(any_text, any_text)
def test_matches_rapidfuzz_and_editdistance(a, b):
    d = levenshtein(a, b)
    assert d == reference(a, b)
    assert d == editdistance.eval(a, b)


@settings(max_examples=200, deadline=None)
@given(any_text, any_text, st.integers(min_value=0, max_value=12))
def test_max_dist_caps_at_max_dist_plus_one(a, b, max_dist):
    assert levenshtein(a, b, max_dist=max_dist) == min(reference(a, b), max_dist + 1)


@pytest.mark.parametrize("n", [1, 63, 64, 65, 127, 128, 129, 200])
@pytest.mark.parametrize("m", [0, 1, 64, 65, 130])
def test_block_boundaries(n, m):
    rng = np.random.default_rng(n * 1000 + m)
    alphabet = list("ab\u2581\u4f60")
    a = "".join(rng.choice(alphabet, n))
    b = "".join(rng.choice(alphabet, m))
    assert levenshtein(a, b) == reference(a, b)
    assert levenshtein(b, a) == reference(a, b)
    for cutoff in (0, 1, 5, 40):
        assert levenshtein(a, b, max_dist=cutoff) == min(reference(a, b), cutoff + 1)


def test_known_values():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "") == 0
    assert levenshtein("", "\U0001F600\U0001F600") == 2  # code points, not UTF-16 units
    assert levenshtein("\u0120the", "\u2581the") == 1
    assert levenshtein("e\u0301", "\u00e9") == 2  # no Unicode normalisation
    assert levenshtein("abc", "abc", max_dist=0) == 0
    assert levenshtein("abc", "abd", max_dist=0) == 1
    assert levenshtein("a" * 300, "b" * 300) == 300
    assert levenshtein("a" * 300, "b" * 300, max_dist=7) == 8


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(any_text, any_text), max_size=60), st.one_of(st.none(), st.integers(0, 6)))
def test_batch_equals_single(pairs, max_dist):
    a = [p[0] for p in pairs]
    b = [p[1] for p in pairs]
    out = levenshtein_batch(a, b, max_dist=max_dist)
    assert out.dtype == np.int32 and out.shape == (len(pairs),)
    expected = [levenshtein(x, y, max_dist=max_dist) for x, y in pairs]
    assert out.tolist() == expected


def test_batch_threads_identical_and_tuple_input():
    rng = np.random.default_rng(0)
    alphabet = list("abcde\u0120\u4f60")
    a = tuple("".join(rng.choice(alphabet, rng.integers(0, 90))) for _ in range(5000))
    b = tuple("".join(rng.choice(alphabet, rng.integers(0, 90))) for _ in range(5000))
    one = levenshtein_batch(a, b, threads=1)
    many = levenshtein_batch(a, b, threads=0)
    three = levenshtein_batch(a, b, threads=3)
    assert np.array_equal(one, many) and np.array_equal(one, three)
    assert one.tolist() == [reference(x, y) for x, y in zip(a, b)]
    assert levenshtein_batch([], []).shape == (0,)


def test_errors_name_the_argument():
    with pytest.raises(TypeError, match="a must be str"):
        levenshtein(b"abc", "abc")
    with pytest.raises(TypeError, match="b must be str"):
        levenshtein("abc", None)
    with pytest.raises(ValueError, match="max_dist"):
        levenshtein("a", "b", max_dist=-1)
    with pytest.raises(TypeError, match="max_dist"):
        levenshtein("a", "b", max_dist=1.5)
    with pytest.raises(TypeError, match="max_dist"):
        levenshtein("a", "b", max_dist=True)
    with pytest.raises(TypeError, match=r"b\[1\] must be str"):
        levenshtein_batch(["x", "y"], ["x", 3])
    with pytest.raises(TypeError, match="a must be a sequence of str"):
        levenshtein_batch("xy", ["x", "y"])
    with pytest.raises(ValueError, match="same length"):
        levenshtein_batch(["x"], ["x", "y"])
    with pytest.raises(ValueError, match="threads"):
        levenshtein_batch(["x"], ["y"], threads=-2)
    with pytest.raises(ValueError, match="max_dist"):
        levenshtein_batch(["x"], ["y"], max_dist=-3)


def test_numpy_string_arrays_are_accepted():
    a = np.array(["kitten", "", "\u4f60\u597d"])
    b = np.array(["sitting", "abc", "\u4f60"])
    assert levenshtein_batch(a, b).tolist() == [3, 3, 1]
    with pytest.raises(ValueError, match="a must be 1-D"):
        levenshtein_batch(a.reshape(3, 1), b)
    with pytest.raises(TypeError, match=r"b\[0\] must be str"):
        levenshtein_batch(a[:2], np.array([1, 2]))
