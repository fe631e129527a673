"""Lax validations found by a robustness review: each is now a clear error naming the argument."""
import dataclasses

import numpy as np
import pytest
import torch

from fusekernels.align import build_transfer_tables, dtw_align, dtw_align_batch, transfer_topk
from fusekernels.align.topk_transfer import transfer_topk_batch

BLEND = ["▁Hel", "lo", "▁world", "▁word"]
BASE = ["Hello", "Ġworld", "Ġword"]


def _tables(**kw):
    return build_transfer_tables(BLEND, BASE, blend_marker="▁", base_marker="Ġ", **kw)


def test_vocab_map_values_must_be_base_tokens():
    keys = [t.replace("▁", "Ġ") for t in BLEND]
    with pytest.raises(TypeError, match="must be base token strings"):
        _tables(vocab_map={k: 7 for k in keys})
    with pytest.raises(TypeError, match="must be base token strings"):
        _tables(vocab_map={**{k: "Hello" for k in keys}, keys[-1]: None})
    assert _tables(vocab_map={k: "Hello" for k in keys}).soft.tolist() == [0, 0, 0, 0]


def test_hand_built_tables_are_validated():
    good = _tables()
    for change, match in [({"exact": good.exact[:-1]}, "exact"),
                          ({"exact": good.exact.astype(np.int64)}, "int32"),
                          ({"exact": np.full(4, 9, np.int32)}, "outside"),
                          ({"base_canonical": np.array([0, 1, -1], np.int32)}, "base_canonical"),
                          ({"blend_starts_with_marker": np.zeros(3, bool)}, "blend_starts_with_marker"),
                          ({"soft": good.exact}, "both"),
                          ({"byte_level_blend": 1}, "byte_level_blend")]:
        with pytest.raises((ValueError, TypeError), match=match):
            dataclasses.replace(good, **change)


def test_bool_threads_rejected():
    with pytest.raises(TypeError, match="threads"):
        dtw_align_batch([["a"]], [["a"]], threads=True)
    al = dtw_align(BLEND[:3], BASE[:2], blend_marker="▁", base_marker="Ġ")
    item = ([0, 1], [0, 1, 2], al, [[1, 0], [3, 1], [2, 3]], [[2.0, 1.0], [1.0, 0.5], [3.0, 1.0]])
    with pytest.raises(TypeError, match="threads"):
        transfer_topk_batch([item], _tables(), threads=True)


def test_positive_infinite_logits_rejected():
    al = dtw_align(BLEND[:3], BASE[:2], blend_marker="▁", base_marker="Ġ")
    logits = [[2.0, 1.0], [float("inf"), 0.5], [3.0, 1.0]]
    with pytest.raises(ValueError, match=r"topk_logits contains \+inf"):
        transfer_topk([0, 1], [0, 1, 2], al, [[1, 0], [3, 1], [2, 3]], logits, _tables())


def test_byte_span_rejects_positive_infinite_logits(char_profile):
    from fusekernels.tokenization import byte_span_align

    ids = [5, 6, 7]
    with pytest.raises(ValueError, match=r"\+inf"):
        byte_span_align(ids, ids, [[5], [6], [7]], [[1.0], [float("inf")], [0.0]], char_profile, char_profile)


@pytest.fixture(scope="module")
def char_profile():
    from fusekernels.tokenization import TokenizerProfile
    from tests.pipeline.helpers import make_char_tokenizer

    return TokenizerProfile.from_tokenizer(make_char_tokenizer())


def _loss_inputs():
    torch.manual_seed(0)
    n, v, t, k = 4, 20, 2, 3
    return dict(logits=torch.randn(n, v), labels=torch.randint(0, v, (n,)),
                teacher_ids=torch.randint(0, v, (n, t, k), dtype=torch.int32), teacher_logits=torch.randn(n, t, k),
                teacher_ce=torch.rand(n, t))


def test_loss_rejects_bool_options_and_negative_ce():
    from fusekernels.loss import fusion_loss

    x = _loss_inputs()
    fusion_loss(**x)
    with pytest.raises(TypeError, match="temperature"):
        fusion_loss(**x, temperature=True)
    with pytest.raises(TypeError, match="lam"):
        fusion_loss(**x, lam=True)
    x["teacher_ce"] = x["teacher_ce"] - 2.0
    with pytest.raises(ValueError, match="negative values"):
        fusion_loss(**x)


def test_teacher_topk_rejects_nan_logits():
    from fusekernels.loss import teacher_topk

    logits = torch.randn(3, 4, 10)
    logits[1, 2, 7] = float("nan")
    with pytest.raises(ValueError, match="NaN in 1 of 12 rows"):
        teacher_topk(logits, k=3)


def test_collator_checks_input_ids_against_vocab_size():
    from fusekernels.integration import FusionDataCollator

    row = {"input_ids": [1, 2, 50], "teacher_ids": np.zeros((3, 1, 2), np.int32),
           "teacher_logits": np.zeros((3, 1, 2), np.float32), "teacher_ce": [0.5]}
    with pytest.raises(ValueError, match="input_ids contains id 50 outside"):
        FusionDataCollator(vocab_size=32)([row])
    row["input_ids"] = [1, 2, 3]
    assert FusionDataCollator(vocab_size=32)([row])["input_ids"].shape == (1, 3)
