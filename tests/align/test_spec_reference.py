"""Hand-worked examples of the spec (sections 3-5), checked on the Python reference AND natively.

The parity tests compare the native code with tests/reference/fusellm_spec.py; these examples
pin the reference itself to the spec text, so a misreading shared by both would still fail.
"""
import numpy as np
import pytest

from fusekernels.align.dtw import Alignment, dtw_align
from fusekernels.align.topk_transfer import build_transfer_tables, transfer_topk
from tests.reference import fusellm_spec as ref

# (blend tokens, base tokens, markers, expected base_to_blending), each worked out by hand.
DTW_CASES = [
    # Equal sequences: every cell on the diagonal costs 0 and diag wins all ties.
    (["a", "a"], ["a", "a"], ("", ""), [[0], [1]]),
    # M = [[1,1,2],[1,2,1],[2,1,2]]; at (2,2) up = left = 1 < diag = 2 and up wins, then
    # diag from (1,2), then left along row 0: pairs (2,2), (1,2), (0,1), (0,0).
    (["a", "b", "a"], ["b", "a", "b"], ("", ""), [[0], [0], [1, 2]]),
    # One base word split in two blending pieces; markers are removed before the distance.
    (["▁he", "llo", "▁world"], ["Ġhello", "Ġworld"], ("▁", "Ġ"), [[0, 1], [2]]),
    # A single blending token serves every base position.
    (["abc"], ["a", "b", "c"], ("", ""), [[0], [0], [0]]),
]


@pytest.mark.parametrize("blend, base, markers, expected", DTW_CASES)
def test_dtw_hand_worked(blend, base, markers, expected):
    assert ref.dtw_base_to_blending(blend, base, *markers) == expected
    got = dtw_align(blend, base, blend_marker=markers[0], base_marker=markers[1])
    assert got.groups() == expected


def test_vocab_mapping_rules():
    base = ["Ġcat", "Ġca", "cb", "ca", "Ġdog"]
    blend = ["▁cat", "cx", "▁do", "▁"]
    # "Ġcat" is a base token (exact); "cx" is at distance 1 from "cb" and "ca": the first base
    # id wins; "Ġdo" is at distance 1 from "Ġdog" only (markers are kept for the distance);
    # "Ġ" is at distance 2 from "Ġca", "cb" and "ca": "Ġca" comes first.
    assert ref.vocab_mapping(blend, base, "▁", "Ġ") == {"Ġcat": "Ġcat", "cx": "cb", "Ġdo": "Ġdog", "Ġ": "Ġca"}


def test_transfer_hard_and_soft_hand_worked():
    blend = ["▁the", "▁cat", "▁cot", "s", "!"]
    base = ["Ġthe", "Ġcat", "s", "Ġcats"]
    vmap = ref.vocab_mapping(blend, base, "▁", "Ġ")
    assert vmap["Ġcot"] == "Ġcat" and vmap["!"] == "s"  # distance 1 each
    base_tokens, blend_tokens = ["Ġthe", "Ġcats"], ["▁the", "▁cat", "s"]
    groups = [[0], [1, 2]]  # "Ġcats" covers two blending tokens -> one-hot
    topk_ids = [[1, 2, 0], [3, 1, 1], [4, 3, 2]]
    topk_logits = [[5.0, 4.0, 3.0], [2.0, 1.0, 0.5], [9.0, 8.0, 7.0]]
    hard = ref.transfer_topk(base_tokens, blend_tokens, groups, topk_ids, topk_logits, blend, base,
                             blend_marker="▁", base_marker="Ġ", mode="hard")
    # j=0 matches: ▁cat -> Ġcat (1), ▁cot is not a base token, ▁the -> Ġthe (0).
    assert hard == ([[1, 0], [3]], [[5.0, 3.0], [1.0]])
    soft = ref.transfer_topk(base_tokens, blend_tokens, groups, topk_ids, topk_logits, blend, base,
                             blend_marker="▁", base_marker="Ġ", mode="soft", vocab_map=vmap)
    # soft: ▁cot -> map -> Ġcat, already present: kept once, with the first logit.
    assert soft == ([[1, 0], [3]], [[5.0, 3.0], [1.0]])

    tables = build_transfer_tables(blend, base, blend_marker="▁", base_marker="Ġ", vocab_map=vmap)
    args = (np.array([0, 3]), np.array([0, 1, 3]), Alignment.from_groups(groups), np.array(topk_ids),
            np.array(topk_logits, dtype=np.float32), tables)
    assert transfer_topk(*args, mode="hard").to_lists() == hard
    assert transfer_topk(*args, mode="soft").to_lists() == soft


def test_transfer_soft_step_match_through_the_map():
    blend = ["▁kitty", "▁the"]
    base = ["Ġcat", "Ġthe"]
    vmap = {"Ġkitty": "Ġcat", "Ġthe": "Ġthe"}
    # Base "Ġcat" aligned 1:1 with blending "▁kitty": hard does not match (one-hot), soft does
    # because map[Ġkitty] == Ġcat; its top-k then goes through the map.
    common = dict(blend_marker="▁", base_marker="Ġ", vocab_map=vmap)
    step = (["Ġcat"], ["▁kitty"], [[0]], [[1, 0]], [[2.0, 1.0]], blend, base)
    hard = ref.transfer_topk(*step, mode="hard", **common)
    soft = ref.transfer_topk(*step, mode="soft", **common)
    assert hard == ([[0]], [[1.0]])
    assert soft == ([[1, 0]], [[2.0, 1.0]])
    tables = build_transfer_tables(blend, base, **common)
    args = (np.array([0]), np.array([0]), Alignment.from_groups([[0]]), np.array([[1, 0]]),
            np.array([[2.0, 1.0]], dtype=np.float32), tables)
    assert transfer_topk(*args, mode="hard").to_lists() == hard
    assert transfer_topk(*args, mode="soft").to_lists() == soft
