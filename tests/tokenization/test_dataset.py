"""align_dataset: Dataset.map over teacher outputs, numpy storage, same results as direct calls."""
from __future__ import annotations

import numpy as np
import pytest

datasets = pytest.importorskip("datasets")

from fusekernels.tokenization.byte_span import byte_span_align  # noqa: E402
from fusekernels.tokenization.compat import compat_align  # noqa: E402
from fusekernels.tokenization.dataset import align_dataset  # noqa: E402
from tests.tokenization.helpers import teacher_topk  # noqa: E402


@pytest.fixture(scope="module")
def teacher_dataset(tokenizer, texts):
    base_tok, blend_tok = tokenizer("mistral-v1"), tokenizer("gpt2")
    rows = {"input_ids": [], "blend_input_ids": [], "blend_topk_ids": [], "blend_topk_logits": [],
            "blend_metric_ce": [], "text": []}
    for seed, text in enumerate(texts):
        a = blend_tok.encode(text, add_special_tokens=False)
        tid, tlg = teacher_topk(a, len(blend_tok), k=4, seed=seed)
        rows["input_ids"].append(base_tok.encode(text, add_special_tokens=False))
        rows["blend_input_ids"].append(a)
        rows["blend_topk_ids"].append(tid.astype(np.int32))
        rows["blend_topk_logits"].append(tlg)
        rows["blend_metric_ce"].append(0.5 + seed)
        rows["text"].append(text)
    return datasets.Dataset.from_dict(rows)


@pytest.mark.parametrize("method,match", [("byte_span", "span"), ("byte_span", "end"), ("compat_hard", "span")])
def test_rows_equal_direct_calls(teacher_dataset, profile, method, match):
    base, blend = profile("mistral-v1"), profile("gpt2")
    out = align_dataset(teacher_dataset, base, blend, method=method, match=match, columns={"text": "text"},
                        logits_dtype="float32", batch_size=5)
    assert out.features["aligned_topk_ids"] == datasets.Array2D(shape=(None, 4), dtype="int32")
    assert out.features["aligned_topk_logits"] == datasets.Array2D(shape=(None, 4), dtype="float32")
    assert "int32" in str(out.data.table.column("aligned_topk_ids").type.storage_dtype)
    rows = out.with_format("numpy")
    for r in range(len(out)):
        row = teacher_dataset[r]
        args = (np.array(row["input_ids"]), np.array(row["blend_input_ids"]), np.array(row["blend_topk_ids"]),
                np.array(row["blend_topk_logits"], dtype=np.float32), base, blend)
        want = (byte_span_align(*args, text=row["text"], match=match) if method == "byte_span"
                else compat_align(*args, mode="hard"))
        got = rows[r]
        assert np.array_equal(got["aligned_topk_ids"], want.ids)
        assert np.array_equal(got["aligned_topk_logits"], want.logits)
        assert got["aligned_metric_ce"] == np.float32(row["blend_metric_ce"])


def test_float16_storage_and_num_proc(teacher_dataset, profile):
    base, blend = profile("mistral-v1"), profile("gpt2")
    one = align_dataset(teacher_dataset, base, blend, columns={"text": "text"})
    two = align_dataset(teacher_dataset, base, blend, columns={"text": "text"}, num_proc=2, batch_size=4)
    assert one.features["aligned_topk_logits"].dtype == "float16"
    table = one.data.table.column("aligned_topk_logits").type.storage_dtype
    assert "halffloat" in str(table)
    for r in range(len(one)):
        assert one[r]["aligned_topk_ids"] == two[r]["aligned_topk_ids"]
        assert one[r]["aligned_topk_logits"] == two[r]["aligned_topk_logits"]


def test_bad_arguments(teacher_dataset, profile):
    base, blend = profile("mistral-v1"), profile("gpt2")
    with pytest.raises(ValueError, match="lacks column"):
        align_dataset(teacher_dataset.remove_columns("blend_metric_ce"), base, blend)
    with pytest.raises(ValueError, match="method"):
        align_dataset(teacher_dataset, base, blend, method="dtw")
    with pytest.raises(ValueError, match="unknown keys"):
        align_dataset(teacher_dataset, base, blend, columns={"labels": "x"})
    with pytest.raises(ValueError, match="logits_dtype"):
        align_dataset(teacher_dataset, base, blend, logits_dtype="bfloat16")
