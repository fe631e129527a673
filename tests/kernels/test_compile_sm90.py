"""Ahead-of-time compilation of the kernels for an H100 (sm_90), without a GPU.

The CPU interpreter accepts code the real compiler may reject, so this runs the full
Triton -> PTX -> cubin pipeline for the shipped launch configurations (in a subprocess, see
aot_compile.py) and checks that the logits streams use 16-byte vector accesses, i.e. that the
kernels are shaped for memory bandwidth.
"""
import json
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("triton")
pytest.importorskip("triton.backends.nvidia.compiler", reason="Triton build without the NVIDIA backend")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compiled():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    proc = subprocess.run([sys.executable, "-m", "tests.kernels.aot_compile"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "ptxas" in proc.stderr.lower() and "No such file" in proc.stderr:
        pytest.skip("Triton's bundled ptxas is not usable here")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.mark.parametrize("name", ["fusion_kl", "fusion_ce"])
def test_fusion_kernel_compiles_with_vector_streams(compiled, name):
    result = compiled[name]
    assert result["cubin_bytes"] > 0
    assert {"ld.global.v4.b32", "st.global.v4.b32"} <= set(result["global_accesses"])


def test_teacher_kernel_compiles_with_vector_loads(compiled):
    result = compiled["teacher"]
    assert result["cubin_bytes"] > 0
    assert any(a.startswith("ld.global.v") for a in result["global_accesses"])
