"""Native DTW alignment vs the pure-Python spec reference (tests/reference/fusellm_spec.py)."""
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fusekernels import _C
from fusekernels.align.dtw import Alignment, dtw_align, dtw_align_batch
from tests.reference.fusellm_spec import dtw_base_to_blending

# Pieces that make tokens: ASCII, accents precomposed and combining, CJK, emoji with modifiers,
# both space markers (so some tokens are empty after stripping) and a multi-character marker.
PIECES = ["a", "b", "ab", "e", "é", "e\u0301", "你", "好", "😀", "👍🏽", "▁", "Ġ", "##", " ", "\n", "Ω"]
MARKERS = ["", "▁", "Ġ", "##"]

token = st.lists(st.sampled_from(PIECES), min_size=0, max_size=4).map("".join)
tokens = st.lists(token, min_size=1, max_size=24)
# Tiny alphabets give many equal costs, hence many ties in the traceback.
tie_tokens = st.lists(st.sampled_from(["a", "b", "ab", "", "▁", "▁a"]), min_size=1, max_size=30)


def check(blend, base, blend_marker, base_marker, **native_kwargs):
    expected = dtw_base_to_blending(blend, base, blend_marker, base_marker)
    if native_kwargs:
        offsets, indices, _ = _C.dtw_align(blend, base, blend_marker, base_marker, **native_kwargs)
        got = Alignment(offsets, indices).groups()
    else:
        got = dtw_align(blend, base, blend_marker=blend_marker, base_marker=base_marker).groups()
    assert got == expected


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tokens, tokens, st.sampled_from(MARKERS), st.sampled_from(MARKERS))
def test_matches_reference_unicode(blend, base, blend_marker, base_marker):
    check(blend, base, blend_marker, base_marker)


@settings(max_examples=150, deadline=None)
@given(tie_tokens, tie_tokens)
def test_matches_reference_many_ties(blend, base):
    check(blend, base, "▁", "")


@settings(max_examples=60, deadline=None)
@given(tokens, tokens, st.integers(0, 64))
def test_cache_budget_never_changes_result(blend, base, budget):
    """Small budgets force the no-cache path (distances recomputed per row)."""
    check(blend, base, "▁", "Ġ", cost_cache_bytes=budget)


def random_tokens(rng, count, alphabet, max_len):
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, max_len))) for _ in range(count)]


@pytest.mark.parametrize("seed", [0, 1])
def test_long_sequences(seed):
    rng = random.Random(seed)
    alphabet = "abcde▁你😀"
    blend = random_tokens(rng, 160, alphabet, 5)
    base = random_tokens(rng, 210, alphabet, 6)
    check(blend, base, "▁", "▁")
    check(blend, base, "▁", "▁", cost_cache_bytes=0)


def test_long_tokens_saturate_the_byte_cache():
    """Distances >= 255 do not fit the one-byte cache and must be recomputed exactly."""
    rng = random.Random(7)
    long_a = ["x" * 300, "y" * 280 + "x" * 20, "z" * 400]
    blend = [rng.choice(long_a + ["a", "xx"]) for _ in range(12)]
    base = [rng.choice(long_a[:2] + ["b", "x" * 10]) for _ in range(9)]
    check(blend, base, "", "")


def test_huge_costs_take_the_64_bit_path():
    """(n + m) x longest token > 2**29: D values may not fit int32, the int64 path must agree."""
    rng = random.Random(11)
    blend = random_tokens(rng, 600, "ab", 3)
    blend[300] = "a" * 2**20
    base = ["ab", "b" * 5, "a"]
    check(blend, base, "", "")


def test_shapes_and_single_token_sides():
    al = dtw_align(["a"], ["a", "b", "c"])
    assert al.offsets.dtype == np.int32 and al.indices.dtype == np.int32
    assert al.groups() == [[0], [0], [0]]
    assert dtw_align(["a", "b", "c"], ["abc"]).groups() == [[0, 1, 2]]
    assert al.num_base == 3
    assert al == Alignment.from_groups([[0], [0], [0]])


def test_markers_are_stripped_not_replaced():
    # "▁the" vs "Ġthe": equal after each side strips its own marker.
    al = dtw_align(["▁the", "▁cat"], ["Ġthe", "Ġcat"], blend_marker="▁", base_marker="Ġ")
    assert al.groups() == [[0], [1]]


def test_batch_equals_single_and_threads_do_not_matter():
    rng = random.Random(3)
    pairs = [(random_tokens(rng, rng.randint(1, 40), "abc▁Ġ", 4), random_tokens(rng, rng.randint(1, 40), "abcĠ", 4))
             for _ in range(12)]
    blend_seqs, base_seqs = [p[0] for p in pairs], [p[1] for p in pairs]
    single = [dtw_align(a, b, blend_marker="▁", base_marker="Ġ") for a, b in pairs]
    for threads in (1, 2, 0):
        batch = dtw_align_batch(blend_seqs, base_seqs, blend_marker="▁", base_marker="Ġ", threads=threads)
        assert batch == single
    assert dtw_align_batch([], []) == []
    # numpy string arrays create their rows and items on access
    blend, base = np.array([["a", "bb", "c"], ["x", "y", "z"]]), np.array([["a", "b"], ["xy", "z"]])
    assert [al.groups() for al in dtw_align_batch(blend, base)] == [[[0], [1, 2]], [[0, 1], [2]]]


@pytest.mark.parametrize("alphabet, max_len", [("ab", 2), ("abcdefghijklmnop", 10)])
def test_working_memory_under_2_mib_for_2048_tokens(alphabet, max_len):
    """Few distinct tokens (cache fully used) and ~all distinct (cache bounded by its budget)."""
    rng = random.Random(5)
    blend = random_tokens(rng, 2048, alphabet, max_len)
    base = random_tokens(rng, 2048, alphabet, max_len)
    al = dtw_align(blend, base)
    assert al.num_base == 2048 and al.offsets[-1] == len(al.indices)
    # 2-bit traceback alone is 1 MiB; a float64 (n+1) x (m+1) matrix would be 32 MiB.
    assert 2048 * 512 <= al.workspace_bytes < 2 * 2**20


def test_bad_input():
    with pytest.raises(ValueError, match="blend_tokens"):
        dtw_align([], ["a"])
    with pytest.raises(ValueError, match="base_tokens"):
        dtw_align(["a"], [])
    with pytest.raises(TypeError, match="blend_tokens"):
        dtw_align("abc", ["a"])
    with pytest.raises(TypeError, match=r"base_tokens\[1\]"):
        dtw_align(["a"], ["a", 3])
    with pytest.raises(TypeError, match="base_marker"):
        dtw_align(["a"], ["a"], base_marker=None)
    with pytest.raises(ValueError, match="same length"):
        dtw_align_batch([["a"]], [["a"], ["b"]])
    with pytest.raises(ValueError, match=r"base_seqs\[1\]"):
        dtw_align_batch([["a"], ["b"]], [["a"], []])
    with pytest.raises(ValueError, match="threads"):
        dtw_align_batch([["a"]], [["a"]], threads=-1)


def test_numpy_string_arrays_equal_lists():
    # numpy creates a new str object per item access: the binding must keep each one alive.
    rng = random.Random(7)
    blend = ["".join(rng.choice("ab▁ç你") for _ in range(rng.randint(1, 5))) for _ in range(200)]
    base = ["".join(rng.choice("abĠç你") for _ in range(rng.randint(1, 5))) for _ in range(150)]
    expected = dtw_align(blend, base, blend_marker="▁", base_marker="Ġ")
    assert dtw_align(np.array(blend), np.array(base), blend_marker="▁", base_marker="Ġ") == expected
    batch = dtw_align_batch([np.array(blend)], [np.array(base)], blend_marker="▁", base_marker="Ġ")
    assert batch == [expected]
