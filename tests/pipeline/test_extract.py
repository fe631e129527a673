import shutil

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fusekernels.pipeline import extract as extract_mod
from fusekernels.pipeline.extract import extract_teacher_topk, load_extracted

TEXTS = ["In the beginning God created the heaven and the earth.", "And God said, Let there be light",
         "", "x", "And the evening and the morning were the first day. " * 3, "Amen."]


@pytest.fixture(scope="module")
def texts():
    return datasets.Dataset.from_dict({"text": TEXTS, "row": list(range(len(TEXTS)))})


def _reference(model, tokenizer, text, k, max_length):
    """One sequence at a time, no padding, full log-softmax in float64."""
    ids = (tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])[:max_length]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    values, top = logits.topk(k, dim=-1)
    ce = F.cross_entropy(logits[:-1], torch.tensor(ids[1:], dtype=torch.long), reduction="none")
    return ids, top, values, ce


@pytest.mark.parametrize("batch_size", [1, 4])
def test_matches_unbatched_reference(tiny_llama, char_tokenizer, texts, batch_size):
    k, max_length = 5, 120
    out = extract_teacher_topk(tiny_llama, char_tokenizer, texts, k=k, batch_size=batch_size,
                               max_length=max_length, per_token_ce=True, progress=False)
    assert out.column_names == ["text", "row", "input_ids", "topk_ids", "topk_logits", "metric_ce",
                                "per_step_metric_ce"]
    assert out.features["topk_ids"].dtype == "int32" and out.features["topk_logits"].dtype == "float16"
    assert out["row"] == list(range(len(TEXTS)))
    rows = out.with_format("numpy")
    for i, text in enumerate(TEXTS):
        ids, top, values, ce = _reference(tiny_llama, char_tokenizer, text, k, max_length)
        row = rows[i]
        assert row["input_ids"].tolist() == ids and ids[-1] == char_tokenizer.eos_token_id or len(ids) == max_length
        assert row["topk_logits"].shape == (len(ids), k)
        np.testing.assert_allclose(row["topk_logits"], values.numpy(), rtol=2e-3, atol=2e-3)  # float16 storage
        assert np.array_equal(row["topk_ids"], top.numpy())  # random model: no ties
        np.testing.assert_allclose(row["per_step_metric_ce"][:-1], ce.numpy(), rtol=1e-4, atol=1e-4)
        assert row["per_step_metric_ce"][-1] == 0
        expected = ce.mean().item() if len(ce) else 0.0
        assert row["metric_ce"] == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_truncation_keeps_max_length_ids(tiny_llama, char_tokenizer, texts):
    out = extract_teacher_topk(tiny_llama, char_tokenizer, texts.select([4]), k=3, max_length=20,
                               logits_dtype="float32", keep_columns=False, progress=False)
    assert out.column_names == ["input_ids", "topk_ids", "topk_logits", "metric_ce"]
    assert len(out[0]["input_ids"]) == 20 and char_tokenizer.eos_token_id not in out[0]["input_ids"]
    assert out.features["topk_logits"].dtype == "float32"


def test_resumable_shards(tiny_llama, char_tokenizer, texts, tmp_path, monkeypatch):
    out_dir = tmp_path / "teacher"
    first = extract_teacher_topk(tiny_llama, char_tokenizer, texts, k=4, batch_size=2, max_length=64,
                                 output_dir=out_dir, shard_size=2, progress=False)
    assert sorted(p.name for p in out_dir.glob("shard-*")) == ["shard-00000", "shard-00001", "shard-00002"]
    shutil.rmtree(out_dir / "shard-00001")
    calls = []
    original = extract_mod._ShardRunner.__call__

    def counting(self, dataset, *args, **kwargs):
        calls.append(len(dataset))
        return original(self, dataset, *args, **kwargs)

    monkeypatch.setattr(extract_mod._ShardRunner, "__call__", counting)
    second = extract_teacher_topk(tiny_llama, char_tokenizer, texts, k=4, batch_size=2, max_length=64,
                                  output_dir=out_dir, shard_size=2, progress=False)
    assert calls == [2]  # only the missing shard ran again
    assert second["input_ids"] == first["input_ids"] and second["metric_ce"] == first["metric_ce"]
    assert load_extracted(out_dir)["topk_ids"] == first["topk_ids"]
    with pytest.raises(ValueError, match="different extraction.*'k'"):
        extract_teacher_topk(tiny_llama, char_tokenizer, texts, k=3, max_length=64, output_dir=out_dir,
                             shard_size=2, progress=False)
    shutil.rmtree(out_dir / "shard-00002")
    with pytest.raises(FileNotFoundError, match="1 of 3 shards not finished"):
        load_extracted(out_dir)


def test_bad_arguments(tiny_llama, char_tokenizer, texts, tmp_path):
    with pytest.raises(ValueError, match="no column 'content'"):
        extract_teacher_topk(tiny_llama, char_tokenizer, texts, text_column="content")
    with pytest.raises(ValueError, match="k must be"):
        extract_teacher_topk(tiny_llama, char_tokenizer, texts, k=0)
    with pytest.raises(ValueError, match="larger than the model's vocabulary"):
        extract_teacher_topk(tiny_llama, char_tokenizer, texts.select([0]), k=1000, progress=False)
    with pytest.raises(ValueError, match="logits_dtype"):
        extract_teacher_topk(tiny_llama, char_tokenizer, texts, logits_dtype="bfloat16")
    with pytest.raises(ValueError, match="dataset is empty"):
        extract_teacher_topk(tiny_llama, char_tokenizer, texts.select([]))
    with pytest.raises(FileNotFoundError, match="no extraction output"):
        load_extracted(tmp_path)


@pytest.mark.slow
def test_extract_sharded_across_processes(tmp_path, tiny_llama, char_tokenizer):
    """Two CPU processes (torchrun, gloo) split the shards and both return the full dataset,
    equal to a single-process run."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           str(Path(__file__).with_name("_sharded_extract.py")), str(tmp_path / "out"), str(tmp_path / "report")]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads((tmp_path / f"report.{rank}").read_text()) for rank in (0, 1)]
    assert [r["world"] for r in reports] == [2, 2]
    assert sorted(p.name for p in (tmp_path / "out").glob("shard-*")) == [f"shard-0000{i}" for i in range(4)]
    texts = datasets.Dataset.from_dict({"text": [f"verse {i}: and God said" * (1 + i % 3) for i in range(10)]})
    single = extract_teacher_topk(tiny_llama, char_tokenizer, texts, k=3, batch_size=2, max_length=64, progress=False)
    for r in reports:
        assert r["rows"] == 10 and r["ids"] == single["input_ids"]
        np.testing.assert_allclose(r["ce"], single["metric_ce"], rtol=1e-4)


def test_resume_refuses_other_texts(tiny_llama, char_tokenizer, texts, tmp_path):
    extract_teacher_topk(tiny_llama, char_tokenizer, texts, k=2, max_length=32, output_dir=tmp_path, progress=False)
    other = texts.map(lambda row: {"text": row["text"].upper()})
    with pytest.raises(ValueError, match="texts_sha256"):
        extract_teacher_topk(tiny_llama, char_tokenizer, other, k=2, max_length=32, output_dir=tmp_path,
                             progress=False)
