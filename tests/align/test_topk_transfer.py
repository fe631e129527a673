"""Native top-k transfer vs the pure-Python spec reference (tests/reference/fusellm_spec.py)."""
import dataclasses
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fusekernels.align.dtw import Alignment, dtw_align
from fusekernels.align.topk_transfer import TopKResult, build_transfer_tables, transfer_topk, transfer_topk_batch
from tests.reference import fusellm_spec as ref

CHARS = ["a", "b", "c", "é", "你", "😀", "e\u0301"]


def random_piece(rng, max_len=3):
    return "".join(rng.choice(CHARS) for _ in range(rng.randint(1, max_len)))


def random_vocabs(rng, blend_marker, base_marker):
    """Small overlapping vocabularies: shared pieces, marker variants, base duplicates."""
    pieces = [random_piece(rng) for _ in range(rng.randint(3, 14))]
    base = []
    for p in pieces:
        if rng.random() < 0.8:
            base.append(p)
        if rng.random() < 0.6:
            base.append(base_marker + p)
    base += [random_piece(rng) for _ in range(rng.randint(1, 4))] + [base_marker]
    if rng.random() < 0.3:
        base.append(rng.choice(base))  # repeated string: looked up by its first id
    rng.shuffle(base)
    blend = []
    for p in pieces:
        if rng.random() < 0.7:
            blend.append(p)
        if rng.random() < 0.6:
            blend.append(blend_marker + p)
    blend += [random_piece(rng) for _ in range(rng.randint(1, 4))]
    rng.shuffle(blend)
    return blend, base


def random_map(rng, blend, base, blend_marker, base_marker):
    """The spec's map, perturbed: some values outside the base vocab, extra marker-prefixed keys."""
    vmap = ref.vocab_mapping(blend, base, blend_marker, base_marker)
    for key in list(vmap):
        r = rng.random()
        if r < 0.15:
            vmap[key] = "∅" + key  # not a base token
        elif r < 0.3:
            vmap[key] = rng.choice(base)
        if rng.random() < 0.3:
            vmap[base_marker + key] = rng.choice(base + ["∅"])
    return vmap


def random_case(seed):
    rng = random.Random(seed)
    blend_marker, base_marker = rng.choice([("▁", "Ġ"), ("Ġ", "▁"), ("▁", "▁"), ("", "Ġ")])
    blend, base = random_vocabs(rng, blend_marker, base_marker)
    vmap = random_map(rng, blend, base, blend_marker, base_marker)
    n, m, k = rng.randint(1, 12), rng.randint(1, 12), rng.randint(1, 6)
    blend_ids = [rng.randrange(len(blend)) for _ in range(n)]
    base_ids = [rng.randrange(len(base)) for _ in range(m)]
    if rng.random() < 0.6:
        groups = dtw_align([blend[i] for i in blend_ids], [base[i] for i in base_ids],
                           blend_marker=blend_marker, base_marker=base_marker).groups()
    else:  # arbitrary groups, including empty ones
        groups = [sorted(rng.sample(range(n), rng.choice([0, 1, 1, 1, min(2, n)]))) for _ in range(m)]
    topk_ids = [[rng.randrange(len(blend)) for _ in range(k)] for _ in range(n)]
    topk_logits = np.float32(np.random.default_rng(seed).normal(size=(n, k)) * 4).tolist()
    return dict(blend=blend, base=base, vmap=vmap, blend_marker=blend_marker, base_marker=base_marker,
                blend_ids=blend_ids, base_ids=base_ids, groups=groups, topk_ids=topk_ids,
                topk_logits=topk_logits, byte_level=rng.random() < 0.5)


def reference(case, mode):
    return ref.transfer_topk(
        [case["base"][i] for i in case["base_ids"]], [case["blend"][i] for i in case["blend_ids"]],
        case["groups"], case["topk_ids"], case["topk_logits"], case["blend"], case["base"],
        blend_marker=case["blend_marker"], base_marker=case["base_marker"], mode=mode,
        vocab_map=case["vmap"], byte_level_blend=case["byte_level"], return_matched=True)


def native(case, mode, tables=None):
    tables = tables or build_transfer_tables(
        case["blend"], case["base"], blend_marker=case["blend_marker"], base_marker=case["base_marker"],
        vocab_map=case["vmap"], byte_level_blend=case["byte_level"])
    return transfer_topk(np.array(case["base_ids"]), np.array(case["blend_ids"]), Alignment.from_groups(case["groups"]),
                         np.array(case["topk_ids"]), np.array(case["topk_logits"], dtype=np.float32), tables, mode=mode)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["hard", "soft"]))
def test_matches_reference(seed, mode):
    case = random_case(seed)
    result = native(case, mode)
    ids, logits, matched = reference(case, mode)
    assert result.to_lists() == (ids, logits)
    assert result.matched.dtype == bool and result.matched.tolist() == matched
    k = len(case["topk_ids"][0])
    assert result.ids.shape == result.logits.shape == (len(case["base_ids"]), k)
    pad = np.arange(k)[None, :] >= result.counts[:, None]
    assert (result.ids[pad] == -1).all() and np.isneginf(result.logits[pad]).all()


def special_case_vocab():
    # Blending: byte-level BPE (marker Ġ); base: SentencePiece (marker ▁).
    blend = ["Hello", "Ġworld", "ĠHello", "!", "world"]
    base = ["▁Hello", "Hello", "▁world", "!", "▁hi"]
    return blend, base


@pytest.mark.parametrize("byte_level, expect_match", [(True, True), (False, False)])
def test_first_position_byte_level_special_case(byte_level, expect_match):
    blend, base = special_case_vocab()
    tables = build_transfer_tables(blend, base, blend_marker="Ġ", base_marker="▁", byte_level_blend=byte_level)
    # "Hello" (no marker) at the first position vs base "▁Hello": matches only through the
    # special case, which prepends the base marker.
    topk_ids = np.array([[1, 4, 2], [3, 0, 1]])
    topk_logits = np.array([[3.0, 2.0, 1.0], [5.0, 4.0, 3.0]], dtype=np.float32)
    got = transfer_topk(np.array([0, 2]), np.array([0, 1]), Alignment.from_groups([[0], [1]]),
                        topk_ids, topk_logits, tables).to_lists()
    expected = ref.transfer_topk(["▁Hello", "▁world"], ["Hello", "Ġworld"], [[0], [1]], topk_ids.tolist(),
                                 topk_logits.tolist(), blend, base, blend_marker="Ġ", base_marker="▁",
                                 byte_level_blend=byte_level)
    assert got == expected
    if expect_match:  # Ġworld -> ▁world (2), world: not a base token, ĠHello -> ▁Hello (0)
        assert got == ([[2, 0], [3, 1, 2]], [[3.0, 1.0], [5.0, 4.0, 3.0]])
    else:
        assert got[0][0] == [0] and got[1][0] == [1.0]
    # The special case only applies at j == 0.
    later = transfer_topk(np.array([3, 0]), np.array([3, 0]), Alignment.from_groups([[0], [1]]),
                          topk_ids, topk_logits, tables).to_lists()
    assert later[0][1] == [0] and later[1][1] == [1.0]


def test_soft_mode_uses_the_map_for_steps_and_tokens():
    blend = ["▁cat", "▁dog", "▁kitten", "x"]
    base = ["Ġcat", "Ġdog", "y"]
    vmap = {"Ġcat": "Ġcat", "Ġdog": "Ġdog", "Ġkitten": "Ġcat", "x": "y"}
    tables = build_transfer_tables(blend, base, blend_marker="▁", base_marker="Ġ", vocab_map=vmap)
    args = (np.array([0]), np.array([2]), Alignment.from_groups([[0]]), np.array([[2, 0, 3, 1]]),
            np.array([[4.0, 3.0, 2.0, 1.0]], dtype=np.float32))
    # hard: "Ġkitten" != "Ġcat" -> one-hot on the base token
    assert transfer_topk(*args, tables, mode="hard").to_lists() == ([[0]], [[1.0]])
    # soft: map[Ġkitten] == Ġcat matches; kitten and cat both map to id 0 (kept once)
    assert transfer_topk(*args, tables, mode="soft").to_lists() == ([[0, 2, 1]], [[4.0, 2.0, 1.0]])


def test_duplicates_among_ids_sharing_low_bits():
    """Base ids equal modulo 64 (same bit of the native duplicate filter) but different."""
    base = [f"w{i}" for i in range(300)]
    blend = [f"w{i}" for i in (5, 69, 133, 197, 261)] + ["w5", "zz"]
    tables = build_transfer_tables(blend, base, blend_marker="", base_marker="")
    topk_ids = np.array([[1, 0, 5, 2, 6, 0, 3, 1, 4, 5]])
    topk_logits = np.arange(10, 0, -1, dtype=np.float32)[None, :]
    got = transfer_topk(np.array([5]), np.array([0]), Alignment.from_groups([[0]]), topk_ids, topk_logits,
                        tables).to_lists()
    expected = ref.transfer_topk(["w5"], ["w5"], [[0]], topk_ids.tolist(), topk_logits.tolist(), blend, base,
                                 blend_marker="", base_marker="")
    assert got == expected == ([[69, 5, 133, 197, 261]], [[10.0, 9.0, 7.0, 4.0, 2.0]])


def test_batch_equals_single_and_accepts_torch():
    cases = [random_case(s) for s in range(40)]
    # One shared tables object needs one vocabulary: reuse case 0's vocab for every sequence.
    base_case = cases[0]
    tables = build_transfer_tables(base_case["blend"], base_case["base"], blend_marker=base_case["blend_marker"],
                                   base_marker=base_case["base_marker"], vocab_map=base_case["vmap"],
                                   byte_level_blend=base_case["byte_level"])
    rng = random.Random(1)
    items, singles = [], []
    for c in cases:
        blend_ids = [rng.randrange(len(base_case["blend"])) for _ in c["blend_ids"]]
        base_ids = [rng.randrange(len(base_case["base"])) for _ in c["base_ids"]]
        topk = [[rng.randrange(len(base_case["blend"])) for _ in row] for row in c["topk_ids"]]
        item = (torch.tensor(base_ids), torch.tensor(blend_ids), Alignment.from_groups(c["groups"]),
                torch.tensor(topk), torch.tensor(c["topk_logits"], dtype=torch.float16))
        items.append(item)
        singles.append(transfer_topk(*item, tables, mode="soft"))
    for threads in (1, 2, 0):
        batch = transfer_topk_batch(items, tables, mode="soft", threads=threads)
        assert all(isinstance(r, TopKResult) for r in batch)
        for a, b in zip(batch, singles):
            np.testing.assert_array_equal(a.ids, b.ids)
            np.testing.assert_array_equal(a.logits, b.logits)
            np.testing.assert_array_equal(a.counts, b.counts)


def test_bad_input():
    blend, base = special_case_vocab()
    tables = build_transfer_tables(blend, base, blend_marker="Ġ", base_marker="▁")
    al = Alignment.from_groups([[0], [1]])
    ok = dict(base_ids=np.array([0, 2]), blend_ids=np.array([0, 1]), alignment=al,
              topk_ids=np.array([[1, 2], [3, 0]]), topk_logits=np.zeros((2, 2), dtype=np.float32))

    def call(mode="hard", **changes):
        kw = {**ok, **changes}
        return transfer_topk(kw["base_ids"], kw["blend_ids"], kw["alignment"], kw["topk_ids"], kw["topk_logits"],
                             tables, mode=mode)

    call()
    with pytest.raises(ValueError, match="base_ids holds 5"):
        call(base_ids=np.array([0, 5]))
    with pytest.raises(ValueError, match="blend_ids holds -1"):
        call(blend_ids=np.array([-1, 1]))
    with pytest.raises(ValueError, match="topk_ids holds 9"):
        call(topk_ids=np.array([[1, 9], [3, 0]]))
    for too_big in (2**31, -(2**31) - 1, 2**40):
        with pytest.raises(ValueError, match="topk_ids holds values outside the int32 range"):
            call(topk_ids=np.array([[1, too_big], [3, 0]], dtype=np.int64))
    with pytest.raises(TypeError, match="topk_ids must be an integer array"):
        call(topk_ids=np.zeros((2, 2)))
    with pytest.raises(TypeError, match="topk_logits must be a floating-point"):
        call(topk_logits=np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="NaN"):
        call(topk_logits=np.array([[0.0, np.nan], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="alignment does not match"):
        call(alignment=Alignment.from_groups([[0], [1], [1]]))
    with pytest.raises(ValueError, match="alignment does not match"):
        call(alignment=Alignment.from_groups([[0], [2]]))
    with pytest.raises(ValueError, match="topk_ids must have one row per blending token"):
        call(topk_ids=np.array([[1, 2]]))
    with pytest.raises(ValueError, match="shape of topk_ids"):
        call(topk_logits=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="vocab_map"):
        call(mode="soft")
    with pytest.raises(ValueError, match="mode"):
        call(mode="medium")
    with pytest.raises(ValueError, match="base_ids must not be empty"):
        call(base_ids=np.array([], dtype=np.int64), alignment=Alignment.from_groups([]))
    with pytest.raises(ValueError, match="exact_prefixed has the wrong length"):
        transfer_topk(*ok.values(), dataclasses.replace(tables, exact_prefixed=tables.exact_prefixed[:-1]))
    with pytest.raises(TypeError, match="tables must be a TransferTables"):
        transfer_topk(*ok.values(), {"exact": tables.exact})
    with pytest.raises(ValueError, match=r"items\[1\].*topk_ids holds 9"):
        transfer_topk_batch([tuple(ok.values()), (*list(ok.values())[:3], np.array([[9, 9], [9, 9]]),
                                                  ok["topk_logits"])], tables)
    with pytest.raises(ValueError, match="vocab_map has no key"):
        build_transfer_tables(blend, base, blend_marker="Ġ", base_marker="▁", vocab_map={"▁world": "▁world"})
    with pytest.raises(TypeError, match=r"base_vocab\[1\]"):
        build_transfer_tables(blend, ["a", None], blend_marker="Ġ", base_marker="▁")
    with pytest.raises(ValueError, match="blend_vocab must not be empty"):
        build_transfer_tables([], base, blend_marker="Ġ", base_marker="▁")
