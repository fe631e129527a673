"""benchmarks/gpu_check.sh on a machine without a GPU: clean failure, argument handling, and (with
a stand-in nvidia-smi and interpreter) its step runner and results file."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils timeout")


def _run(*args, env=None, cwd=None):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})}, cwd=cwd)


def _stub(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def test_no_gpu_fails_cleanly(tmp_path):
    done = _run("--out", str(tmp_path / "r.txt"), env={"NVIDIA_SMI": str(tmp_path / "absent-nvidia-smi")})
    assert done.returncode == 3
    assert "no NVIDIA GPU found" in done.stderr and "Traceback" not in done.stderr
    assert not list(tmp_path.iterdir())  # nothing installed, nothing written


def test_help_and_bad_arguments(tmp_path):
    done = _run("--help")
    assert done.returncode == 0 and "--budget SECONDS" in done.stdout and "Exit status" in done.stdout
    for args, message in ((["--bogus"], "unknown argument '--bogus'"), (["--budget"], "--budget needs"),
                          (["--budget", "abc"], "whole number of seconds"), (["--budget", "60"], "at least 120"),
                          (["--out", str(tmp_path / "missing" / "r.txt")], "does not exist"),
                          (["--out"], "--out needs")):
        done = _run(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr and "--help" in done.stderr


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write into read-only folders")
def test_unwritable_out(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    done = _run("--out", str(locked / "r.txt"))
    assert done.returncode == 2 and "cannot write" in done.stderr


@pytest.mark.parametrize("python_rc,expected", [(0, 0), (1, 1)])
def test_steps_and_results_file(tmp_path, python_rc, expected):
    smi = _stub(tmp_path / "nvidia-smi", 'echo "Stand-in GPU, 1.0, 81559 MiB"')
    calls = tmp_path / "calls.txt"
    python = _stub(tmp_path / "python", f'echo "$@" >> {calls}; echo "ran: $*"; exit {python_rc}')
    out = tmp_path / "results.txt"
    done = _run("--skip-install", "--quick", "--python", str(python), "--out", str(out),
                env={"NVIDIA_SMI": str(smi)})
    assert done.returncode == expected, done.stderr
    text = out.read_text()
    assert "gpu: Stand-in GPU, 1.0, 81559 MiB" in text
    steps = ["environment", "CUDA tests", "GPU benchmarks", "FusionTrainer steps"]
    assert [line[3:].split(" (")[0] for line in text.splitlines() if line.startswith("== ")] == \
        ["environment", "CUDA tests", "GPU benchmarks", "FusionTrainer steps, 135M-class Llama, bf16"]
    assert text.count("status: ok") == (len(steps) if python_rc == 0 else 0)
    assert text.count("status: FAILED (exit 1)") == (0 if python_rc == 0 else len(steps))
    invoked = calls.read_text()
    assert "tests/kernels/test_kernels_cuda.py" in invoked and "benchmarks/bench_fusion_loss_gpu.py" in invoked
    assert "benchmarks/gpu_trainer_step.py" in invoked
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".gpu_check")]  # no temporary left


def test_trainer_step_script_runs_on_cpu():
    """The script the GPU check runs last, on a tiny model on the CPU."""
    pytest.importorskip("transformers")
    root = SCRIPT.parents[1]
    done = subprocess.run([sys.executable, "benchmarks/gpu_trainer_step.py", "--device", "cpu",
                           "--tiny", "--batch", "2", "--length", "32", "--steps", "1"], capture_output=True, text=True,
                          timeout=300, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "fusion, fused LM head" in done.stdout and "plain CLM Trainer" in done.stdout
