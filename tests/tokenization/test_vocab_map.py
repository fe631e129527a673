"""Vocabulary map (spec section 3) front end: parity, co-occurrence refinement, persistence."""
from __future__ import annotations

import json

import editdistance
import numpy as np
import pytest

from fusekernels.tokenization.profile import TokenizerProfile
from fusekernels.tokenization.vocab_map import VocabMap, build_vocab_map, cooccurrence_counts, marker_replaced
from tests.reference import fusellm_spec as ref


def _toy_profile(tokens, marker, kind):
    n = len(tokens)
    return TokenizerProfile(name=f"toy-{kind}", kind=kind, marker=marker, tokens=list(tokens),
                            token_bytes=[t.encode() for t in tokens],
                            byte_lengths=np.array([len(t.encode()) for t in tokens], dtype=np.int32),
                            is_special=np.zeros(n, dtype=bool), is_byte_fallback=np.zeros(n, dtype=bool))


def test_matches_reference_on_toy_vocabularies():
    base = _toy_profile(["▁the", "▁a", "the", "ab", "▁cat", "cats", "▁dog", "<s>", "▁", "x", "你好", "▁thé"],
                        "▁", "sentencepiece")
    blend = _toy_profile(["Ġthe", "the", "Ġcat", "Ġcats", "Ġdo", "ĠĠ", "你", "Ġthé", "zz", "ab", "Ġ", "dog"],
                         "Ġ", "byte_level")
    vm = build_vocab_map(base, blend)
    expected = ref.vocab_mapping(blend.tokens, base.tokens, blend.marker, base.marker)
    assert vm.to_dict() == expected
    assert vm.keys == [t.replace("Ġ", "▁") for t in blend.tokens]
    assert vm.base_ids.dtype == np.int32 and vm.distances.dtype == np.int32
    for key, base_id, d in zip(vm.keys, vm.base_ids.tolist(), vm.distances.tolist()):
        assert d == editdistance.eval(key, base.tokens[base_id])


def test_real_pair_sample_against_brute_force(profile):
    base, blend = profile("mistral-v1"), profile("gpt2")
    vm = build_vocab_map(base, blend)
    assert build_vocab_map(base, blend) is vm  # cached
    keys = marker_replaced(blend, base)
    assert vm.keys == keys
    exact = vm.distances == 0
    assert 0.2 < exact.mean() < 0.9
    for i in np.flatnonzero(exact)[::5000]:
        assert base.tokens[vm.base_ids[i]] == keys[i]
    rng = np.random.default_rng(0)
    for i in rng.choice(np.flatnonzero(~exact), size=6, replace=False):
        dists = np.array([editdistance.eval(keys[i], t) for t in base.tokens])
        assert vm.base_ids[i] == int(np.argmin(dists)) and vm.distances[i] == dists.min()


def test_npz_and_json_round_trip(tmp_path, profile):
    base, blend = profile("mistral-v1"), profile("gpt2")
    vm = build_vocab_map(base, blend)
    vm.save_npz(tmp_path / "map.npz")
    back = VocabMap.load_npz(tmp_path / "map.npz", base, blend)
    assert np.array_equal(back.base_ids, vm.base_ids) and np.array_equal(back.distances, vm.distances)
    assert (tmp_path / "map.npz").stat().st_size < 400_000  # compact: int32 arrays, compressed
    with pytest.raises(ValueError, match="other tokenizers"):
        VocabMap.load_npz(tmp_path / "map.npz", blend, base)
    vm.save_json(tmp_path / "map.json")
    published = json.loads((tmp_path / "map.json").read_text(encoding="utf-8"))
    assert published == vm.to_dict() and published["▁the"] == "▁the"
    back = VocabMap.load_json(tmp_path / "map.json", base, blend)
    assert np.array_equal(back.base_ids, vm.base_ids)


def test_cooccurrence_counts_are_sparse_and_exact():
    seqs = [np.array([0, 1, 2, 0, 3, 4, 5, 6, 7, 0])]
    column_of = np.array([-1, 0, 1, 2, 3, 4, 5, 6])
    rows = cooccurrence_counts(seqs, np.array([0]), column_of, window=2)
    cols, counts = rows[0]
    expected = {}
    ids = seqs[0]
    for t in np.flatnonzero(ids == 0):
        for u in range(max(0, t - 2), min(len(ids), t + 3)):
            if u != t and column_of[ids[u]] >= 0:
                expected[column_of[ids[u]]] = expected.get(column_of[ids[u]], 0) + 1
    assert dict(zip(cols.tolist(), counts.tolist())) == expected


def test_cooccurrence_refinement_picks_the_contextual_candidate():
    # "▁bat" (blending) is at distance 1 from both "▁bad" (id 3) and "▁bar" (id 4); MinED keeps
    # the lower id "▁bad", co-occurrence evidence says "▁bar" (both appear next to "▁drink").
    base = _toy_profile(["▁the", "▁drink", "▁good", "▁bad", "▁bar", "▁very"], "▁", "sentencepiece")
    blend = _toy_profile(["Ġthe", "Ġdrink", "Ġgood", "Ġbat", "Ġvery"], "Ġ", "byte_level")
    default = build_vocab_map(base, blend)
    assert default.to_dict()["▁bat"] == "▁bad"
    base_seqs = [[0, 4, 1, 0, 4, 1], [5, 2, 0, 3, 5]]
    blend_seqs = [[0, 3, 1, 0, 3, 1], [4, 2, 0, 4]]
    refined = build_vocab_map(base, blend, mode="co_occurrence", corpus_ids=(base_seqs, blend_seqs), window=1)
    assert refined.to_dict()["▁bat"] == "▁bar"
    assert refined.method == "co_occurrence"
    # No evidence for the tied token: the MinED choice stays.
    kept = build_vocab_map(base, blend, mode="co_occurrence", corpus_ids=([[0, 1]], [[0, 1]]))
    assert kept.to_dict() == default.to_dict()


def test_cooccurrence_on_real_corpus(tokenizer):
    from fusekernels.tokenization import assets

    base_tok, blend_tok = tokenizer("mistral-v1"), tokenizer("gpt2")
    try:
        corpus = assets.kjv_verses(300)
    except assets.AssetUnavailable as exc:
        pytest.skip(str(exc))
    vm = build_vocab_map(base_tok, blend_tok, mode="co_occurrence", corpus=corpus)
    default = build_vocab_map(base_tok, blend_tok)
    assert np.array_equal(vm.distances, default.distances)  # only ties are re-decided
    changed = np.flatnonzero(vm.base_ids != default.base_ids)
    assert changed.size > 0  # 300 verses give evidence for some tied tokens
    base_tokens = default.base_tokens
    for i in changed[:50]:
        assert editdistance.eval(vm.keys[i], base_tokens[vm.base_ids[i]]) == default.distances[i]
        assert vm.base_ids[i] > default.base_ids[i]  # MinED took the lowest id among the ties


def test_bad_arguments(profile):
    base, blend = profile("mistral-v1"), profile("gpt2")
    with pytest.raises(ValueError, match="mode"):
        build_vocab_map(base, blend, mode="nearest")
    with pytest.raises(ValueError, match="corpus"):
        build_vocab_map(base, blend, mode="co_occurrence")
    with pytest.raises(TypeError, match="base"):
        build_vocab_map("gpt2", blend)
