"""MinED mapping against a brute-force argmin over editdistance, tie rule included."""
import importlib.util
import os
from pathlib import Path

import editdistance
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusekernels.align import MinEDIndex, MinEDResult, mined_map

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def brute_force(queries, targets):
    """(ids, distances, ties) with the published rule: argmin in target order."""
    ids, dists, ties = [], [], []
    for q in queries:
        d = np.array([editdistance.eval(q, t) for t in targets])
        ids.append(int(np.argmin(d)))  # first index of the minimum
        dists.append(int(d.min()))
        ties.append(np.flatnonzero(d == d.min()).tolist())
    return ids, dists, ties


def check(result: MinEDResult, queries, targets):
    ids, dists, ties = brute_force(queries, targets)
    assert result.ids.dtype == np.int32 and result.distances.dtype == np.int32
    assert result.ids.tolist() == ids
    assert result.distances.tolist() == dists
    if result.tie_offsets is not None:
        assert result.tie_offsets.dtype == np.int64 and result.tie_ids.dtype == np.int32
        assert result.tie_offsets.shape == (len(queries) + 1,)
        assert [result.ties(i).tolist() for i in range(len(queries))] == ties


# Small alphabets make many targets equidistant, which is what exercises the tie rule.
tiny = st.text(alphabet="ab\u0120", max_size=5)
mixed = st.text(alphabet="abcx\u0120\u2581\u4f60\U0001F600\u0301", max_size=9)
longish = st.text(alphabet="ab\u4f60", min_size=60, max_size=140)
strings = st.one_of(tiny, mixed, longish)


@settings(max_examples=150, deadline=None)
@given(st.lists(strings, min_size=1, max_size=40), st.lists(strings, max_size=25), st.booleans())
def test_matches_brute_force(targets, queries, return_ties):
    # Queries equal to some targets exercise the exact-match path; duplicates are allowed.
    queries = queries + targets[:3]
    check(mined_map(queries, targets, return_ties=return_ties), queries, targets)


@settings(max_examples=60, deadline=None)
@given(st.lists(tiny, min_size=1, max_size=60), st.lists(st.text(alphabet="abcz\u4f60", max_size=7), max_size=30))
def test_many_ties_and_foreign_characters(targets, queries):
    # 'z' and '\u4f60' never occur in the targets: they exercise the foreign-character bounds.
    check(mined_map(queries, targets, return_ties=True), queries, targets)


def test_tie_goes_to_lowest_index_across_lengths():
    # "ab" is at distance 1 from all three; the lowest index (a longer string) must win.
    targets = ["abcd", "abc", "xb", "a", "ab"]
    r = mined_map(["ab", "abx", "zzzz"], targets, return_ties=True)
    check(r, ["ab", "abx", "zzzz"], targets)
    assert r.ids[0] == 4 and r.distances[0] == 0
    assert r.ids[1] == 1 and r.ties(1).tolist() == [1, 4]


def test_duplicates_empty_strings_and_long_strings():
    long_a = "a" * 70 + "\u4f60" * 70
    targets = ("", "x", "x", "yy", long_a, long_a[:-1], "", "\U0010FFFF\x00")
    queries = ["", "x", "z", "yyy", long_a, long_a + "b", "b" * 200, "\U0001F600", "\U0010FFFF", "\x00"]
    check(mined_map(queries, targets, return_ties=True), queries, targets)
    r = mined_map(["x"], targets, return_ties=True)
    assert r.ids[0] == 1 and r.ties(0).tolist() == [1, 2]


def test_threads_identical_and_index_reuse():
    rng = np.random.default_rng(0)
    alphabet = list("abcde\u0120")
    targets = ["".join(rng.choice(alphabet, rng.integers(0, 8))) for _ in range(3000)]
    queries = ["".join(rng.choice(alphabet + ["q"], rng.integers(0, 10))) for _ in range(600)]
    one = mined_map(queries, targets, threads=1, return_ties=True)
    many = mined_map(queries, targets, threads=0, return_ties=True)
    for field in ("ids", "distances", "tie_offsets", "tie_ids"):
        assert np.array_equal(getattr(one, field), getattr(many, field))
    index = MinEDIndex(targets)
    assert len(index) == len(targets)
    again = index.map(queries, threads=2)
    assert np.array_equal(again.ids, one.ids) and again.tie_ids is None
    sample = queries[:60]
    check(index.map(sample, return_ties=True), sample, targets)


def test_errors():
    with pytest.raises(ValueError, match="targets must not be empty"):
        mined_map(["a"], [])
    with pytest.raises(ValueError, match="targets must not be empty"):
        MinEDIndex([])
    with pytest.raises(TypeError, match=r"targets\[1\] must be str"):
        mined_map(["a"], ["a", 2])
    with pytest.raises(TypeError, match=r"queries\[0\] must be str"):
        mined_map([None], ["a"])
    with pytest.raises(TypeError, match="queries must be a sequence of str"):
        mined_map("abc", ["a"])
    with pytest.raises(ValueError, match="threads"):
        mined_map(["a"], ["a"], threads=-1)
    with pytest.raises(ValueError, match="return_ties"):
        mined_map(["a"], ["a"]).ties(0)
    empty = mined_map([], ["a"], return_ties=True)
    assert empty.ids.shape == (0,) and empty.tie_offsets.tolist() == [0]


def _mistral_pieces():
    spm = pytest.importorskip("sentencepiece")
    spec = importlib.util.find_spec("mistral_common")  # locate the file without importing the package
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("mistral-common (real SentencePiece vocabulary) is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "tokenizer.model.v1"
    if not path.is_file():
        pytest.skip("mistral-common ships no tokenizer.model.v1")
    sp = spm.SentencePieceProcessor(model_file=str(path))
    return [sp.id_to_piece(i) for i in range(sp.get_piece_size())]


def test_real_vocabulary_against_rapidfuzz():
    """Mistral pieces with the marker swapped, against the same vocabulary perturbed."""
    process = pytest.importorskip("rapidfuzz.process")
    from rapidfuzz.distance import Levenshtein

    pieces = _mistral_pieces()
    targets = pieces[:8000]
    rng = np.random.default_rng(1)
    picked = rng.choice(len(pieces), 300, replace=False)
    queries = [pieces[i].replace("\u2581", "\u0120") for i in picked]
    r = mined_map(queries, targets, return_ties=True)
    dist = process.cdist(queries, targets, scorer=Levenshtein.distance, dtype=np.int32, workers=1)
    assert r.ids.tolist() == dist.argmin(axis=1).tolist()
    assert r.distances.tolist() == dist.min(axis=1).tolist()
    for i in range(len(queries)):
        assert r.ties(i).tolist() == np.flatnonzero(dist[i] == dist[i].min()).tolist()


@pytest.mark.parametrize("return_ties", [False, True])
def test_large_distances_use_the_bound_ordered_search(return_ties):
    # Minimum distances well above those settled by the deletion indexes (up to 2).
    rng = np.random.default_rng(7)
    targets = ["".join(rng.choice(list("abcd"), rng.integers(10, 40))) for _ in range(250)]
    queries = ["".join(rng.choice(list("abcdz"), rng.integers(5, 45))) for _ in range(60)]
    r = mined_map(queries, targets, return_ties=return_ties)
    assert (r.distances > 5).sum() >= 30
    check(r, queries, targets)


def test_numpy_string_arrays_are_accepted():
    targets = np.array(["abd", "abc", "x"])
    r = mined_map(np.array(["abc", "xy"]), targets, return_ties=True)
    check(r, ["abc", "xy"], list(targets))
    assert np.array_equal(MinEDIndex(targets).map(np.array(["abc", "xy"])).ids, r.ids)


def _edit(rng, s, alphabet, edits):
    """s with `edits` random single-character insertions, deletions or substitutions."""
    s = list(s)
    for _ in range(edits):
        op = rng.integers(3) if s else 0
        if op == 0:
            s.insert(int(rng.integers(len(s) + 1)), str(rng.choice(alphabet)))
        elif op == 1:
            del s[int(rng.integers(len(s)))]
        else:
            s[int(rng.integers(len(s)))] = str(rng.choice(alphabet))
    return "".join(s)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet="abc\u4f60\U0001F600", max_size=8), min_size=1, max_size=50),
       st.integers(0, 2**32 - 1), st.booleans())
def test_queries_within_two_and_three_edits(targets, seed, return_ties):
    # Queries made from targets by 2 or 3 edits: the distance-2 index (symmetric deletions,
    # repeated characters included) and the first levels of the bound-ordered search.
    rng = np.random.default_rng(seed)
    alphabet = list("abcd\u4f60")
    queries = [_edit(rng, targets[int(rng.integers(len(targets)))], alphabet, int(rng.integers(2, 4)))
               for _ in range(20)]
    check(mined_map(queries, targets, return_ties=return_ties), queries, targets)


def test_distance_two_cases_and_ties():
    targets = ["abcdef", "xbcdey", "abcd", "abcdefgh", "badc", "aaaa", "aa", "\u4f60\u597d\u4f60", "zzzzzz"]
    queries = [
        "xbcdef",  # index 0 at 1 (not 2): the distance-1 stage still wins
        "abxdyf",  # two substitutions of index 0
        "abcdefghij",  # two insertions after index 3
        "abdc",  # index 4 ("badc") at 2 by a swap; "abcd" (index 2) at 2 as well: tie, lowest wins
        "aaaaaa",  # runs: "aaaa" at 2, "aa" at 4
        "\u4f60x\u4f60y",  # CJK: two edits from index 7
        "bc",  # "abcd", "badc" and "aa" at distance 2 (ties across lengths)
    ]
    r = mined_map(queries, targets, return_ties=True)
    check(r, queries, targets)
    assert r.distances.tolist() == [1, 2, 2, 2, 2, 2, 2]
    assert r.ties(3).tolist() == [2, 4] and r.ids[3] == 2
    assert r.ties(6).tolist() == [2, 4, 6] and r.ids[6] == 2


def test_distance_three_ties_and_disjoint_characters():
    # Nothing within 2, several targets at exactly 3, one of them longer and of lower index.
    targets = ["qqqabc", "xyz", "abcxyz", "abc", "qqqqqq", "zzzabc"]
    r = mined_map(["abcabc", "abc", "\u4f60\u4f60", "\u4f60\u4f60\u4f60\u4f60"], targets, return_ties=True)
    check(r, ["abcabc", "abc", "\u4f60\u4f60", "\u4f60\u4f60\u4f60\u4f60"], targets)
    assert r.distances[0] == 3 and r.ties(0).tolist() == [0, 2, 3, 5]
    # No shared character: every target is at max(n, m); the shortest-enough lowest index wins.
    assert r.distances[2] == 3 and r.ties(2).tolist() == [1, 3]
    assert r.distances[3] == 4 and r.ties(3).tolist() == [1, 3]


def test_shared_characters_that_cannot_align():
    # "ba" shares both characters with "ab" but is still at max(n, m) = 2, tying with a target
    # that shares nothing; a higher-index target sharing nothing must not displace index 0.
    targets = ["ba", "cd", "ab"]
    r = mined_map(["xa", "ax", "yy"], targets, return_ties=True)
    check(r, ["xa", "ax", "yy"], targets)
    assert r.ties(2).tolist() == [0, 1, 2]


def test_long_strings_near_and_far():
    # Patterns over 64 and 128 code points (multi-word kernel) within 2 and 3 edits, and far.
    rng = np.random.default_rng(3)
    alphabet = list("ab\u4f60\u597d")
    targets = ["".join(rng.choice(alphabet, int(rng.integers(60, 150)))) for _ in range(40)] + ["a", "b" * 3]
    queries = [_edit(rng, targets[i], alphabet, e) for i, e in zip(range(0, 40, 3), [2, 3] * 7)]
    queries += ["c" * 200, "a" * 130, targets[5][:64] + targets[6][64:]]
    check(mined_map(queries, targets, return_ties=True), queries, targets)
    check(mined_map(queries, targets), queries, targets)


@pytest.mark.parametrize("length", [63, 64, 65, 66, 67, 100])
def test_distance_two_ties_around_the_indexed_length(length):
    # Targets at distance 2 that are 2 longer, equally long and 2 shorter than the query, on both
    # sides of the length up to which two-deletion variants are indexed (64).
    rng = np.random.default_rng(length)
    base = "".join(rng.choice(list("abcd\u4f60"), length))
    query = base[:10] + base[12:]  # two deletions
    same = query[:3] + "xy" + query[5:]  # two substitutions
    shorter = query[:20] + query[22:]  # two deletions of the query
    targets = ["z" * 5, base, same, shorter, base + "q"]
    r = mined_map([query], targets, return_ties=True)
    check(r, [query], targets)
    assert r.distances[0] == 2 and r.ties(0).tolist() == [1, 2, 3]


def test_many_candidates_per_bound_level():
    # Thousands of targets with equal bounds (more than one window of the bound-ordered search)
    # and many ties at the minimum.
    rng = np.random.default_rng(11)
    targets = ["".join(rng.choice(list("abcdef"), int(rng.integers(4, 12)))) for _ in range(4000)]
    queries = ["".join(rng.choice(list("abcdefg"), int(rng.integers(1, 16)))) for _ in range(40)]
    queries += ["g" * 7, "ag" * 6, "abcdefabcdefabcdef"]
    r = mined_map(queries, targets, return_ties=True)
    assert (r.distances >= 3).sum() >= 10
    check(r, queries, targets)
