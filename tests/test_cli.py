"""The ``fusekernels`` command line: every subcommand end to end on tiny models, and user errors."""
import json
import os
import subprocess
import sys

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fusekernels.cli import main  # noqa: E402
from tests.pipeline.helpers import make_char_tokenizer, make_tiny_llama  # noqa: E402

KJV = ["In the beginning God created the heaven and the earth.",
       "And the earth was without form, and void; and darkness was upon the face of the deep.",
       "And the Spirit of God moved upon the face of the waters.",
       "And God said, Let there be light: and there was light.",
       "And God saw the light, that it was good: and God divided the light from the darkness."] * 3


def _run(*argv):
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A teacher (tiny Llama, character tokenizer) and a student (tiny Llama, Mistral tokenizer)."""
    assets = pytest.importorskip("fusekernels.tokenization.assets")
    try:
        student_tok = assets.load_tokenizer("mistral-v1")
    except assets.AssetUnavailable as err:
        pytest.skip(str(err))
    root = tmp_path_factory.mktemp("cli")
    teacher_tok = make_char_tokenizer()
    make_tiny_llama(len(teacher_tok), seed=1).save_pretrained(root / "teacher")
    teacher_tok.save_pretrained(root / "teacher")
    make_tiny_llama(len(student_tok), seed=2, max_positions=64).save_pretrained(root / "student")
    student_tok.save_pretrained(root / "student")
    with open(root / "docs.jsonl", "w") as fh:
        for i, text in enumerate(KJV):
            fh.write(json.dumps({"text": text * (1 + i % 3), "id": i}) + "\n")
    return root


def test_pipeline_end_to_end(workspace):
    w = workspace
    assert _run("split", "--data", w / "docs.jsonl", "--tokenizer", w / "student", w / "teacher",
                "--block-size", 128, "--out", w / "split") == 0
    for model in ("teacher", "student"):
        assert _run("extract", "--model", w / model, "--data", w / "split", "--k", 4, "--max-length", 64,
                    "--shard-size", 8, "--out", w / f"{model}_topk") == 0
    assert _run("vocab-map", "--base-tokenizer", w / "student", "--blend-tokenizer", w / "teacher",
                "--out", w / "map.json") == 0
    assert len(json.loads((w / "map.json").read_text())) == 98
    assert _run("vocab-map", "--base-tokenizer", w / "student", "--blend-tokenizer", w / "teacher",
                "--out", w / "map.npz") == 0
    assert _run("align", "--base", w / "split", "--no-base-teacher", "--max-length", 64, "--base-tokenizer",
                w / "student", "--teacher", w / "teacher_topk", "--teacher-tokenizer", w / "teacher",
                "--method", "compat_soft", "--vocab-map", w / "map.npz", "--out", w / "aligned_soft") == 0
    assert _run("align", "--base", w / "student_topk", "--base-tokenizer", w / "student", "--teacher",
                w / "teacher_topk", "--teacher-tokenizer", w / "teacher", "--base-teacher", "--fallback", "published",
                "--out", w / "aligned") == 0
    assert _run("pack", "--data", w / "aligned", "--block-size", 32, "--out", w / "packed") == 0
    import datasets

    packed = datasets.load_from_disk(str(w / "packed"))
    assert len(packed) > 2 and len(packed[0]["input_ids"]) == 32
    assert packed.features["teacher_ids"].shape == (None, 2, 4)  # the student itself + the teacher
    soft = datasets.load_from_disk(str(w / "aligned_soft"))
    assert soft.features["teacher_ids"].shape == (None, 1, 4)
    assert soft["input_ids"] == datasets.load_from_disk(str(w / "aligned"))["input_ids"]
    assert _run("train", "--model", w / "student", "--data", w / "packed", "--steps", 2, "--batch-size", 2,
                "--lr", 1e-3, "--logging-steps", 1, "--cpu", "--out", w / "trained") == 0
    assert _run("merge", "--targets", w / "trained", w / "student", "--method", "linear",
                "--out", w / "merged") == 0
    from transformers import AutoModelForCausalLM

    merged, trained, start = (AutoModelForCausalLM.from_pretrained(w / n) for n in ("merged", "trained", "student"))
    for p, a, b in zip(merged.parameters(), trained.parameters(), start.parameters()):
        torch.testing.assert_close(p, (a + b) / 2)
    assert _run("merge", "--targets", w / "trained", "--base", w / "student", "--out", w / "varm") == 0


def test_user_errors_exit_2_without_traceback(workspace, tmp_path, capsys):
    assert _run("pack", "--data", tmp_path / "missing", "--block-size", 8, "--out", tmp_path / "o") == 2
    assert "data not found" in capsys.readouterr().err
    assert _run("merge", "--targets", tmp_path / "nothing", "--method", "linear", "--out", tmp_path / "m") == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert _run("merge", "--targets", workspace / "student", "--out", tmp_path / "m") == 2
    assert "needs base=" in capsys.readouterr().err
    assert _run("merge", "--targets", workspace / "student", "--method", "linear", "--max-shard-size", "lots",
                "--out", tmp_path / "m") == 2
    assert "--max-shard-size" in capsys.readouterr().err
    assert _run("align", "--base", workspace / "docs.jsonl", "--base-tokenizer", workspace / "student",
                "--teacher", workspace / "x", "--out", tmp_path / "a") == 2
    assert "1 --teacher but 0 --teacher-tokenizer" in capsys.readouterr().err
    assert _run("extract", "--model", workspace / "teacher", "--tokenizer", "no-such-tokenizer",
                "--data", workspace / "docs.jsonl", "--out", tmp_path / "e") == 2
    assert "neither an existing path" in capsys.readouterr().err
    (tmp_path / "notempty").mkdir()
    (tmp_path / "notempty" / "f").write_text("x")
    assert _run("split", "--data", workspace / "docs.jsonl", "--tokenizer", workspace / "teacher",
                "--block-size", 100, "--out", tmp_path / "notempty") == 2
    assert "not empty" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse's own errors also exit with 2
        _run("pack", "--data", "x", "--block-size", 0, "--out", "y")
    assert exc.value.code == 2


def test_python_m_entry_point(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-m", "fusekernels", "merge", "--targets", str(tmp_path / "none"),
                           "--method", "linear", "--out", str(tmp_path / "o")], capture_output=True, text=True, env=env)
    assert done.returncode == 2
    assert "fusekernels merge: error: checkpoint not found" in done.stderr and "Traceback" not in done.stderr
    helped = subprocess.run([sys.executable, "-m", "fusekernels", "--help"], capture_output=True, text=True, env=env)
    assert helped.returncode == 0
    for name in ("split", "extract", "vocab-map", "align", "pack", "train", "merge", "demo"):
        assert name in helped.stdout
