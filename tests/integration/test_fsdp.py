"""The fused LM head under FSDP: 2 CPU processes (gloo), model sharded with torch FSDP2
(``fully_shard``); the fusion loss computed inside the sharded model's forward equals the
unsharded model's, with the same gradients, and the hidden-state capture succeeds (no fallback)."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("torch.distributed.fsdp")

REPO = Path(__file__).resolve().parents[2]


def test_fused_head_inside_fsdp2_sharded_forward(tmp_path):
    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not on PATH")
    out = tmp_path / "fsdp.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    # --standalone: the launcher binds a free port itself (a port picked here and released could be
    # taken by another job before torchrun binds it)
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2",
           str(REPO / "tests" / "integration" / "fsdp_worker.py"), str(out)]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["world"] == 2 and report["head_weight_type"] == "DTensor"  # sharded outside the forward
    assert report["fused"] and report["reference_fused"] and not report["warned"]
    assert report["loss"] == pytest.approx(report["reference_loss"], rel=1e-6)
    assert report["max_rel_grad_diff"] < 1e-5
