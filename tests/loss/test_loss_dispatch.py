"""The public API dispatches to the Triton kernels (run here on the Triton CPU interpreter).

The interpreter mode must be chosen before triton is imported, so the check runs in a fresh
process with TRITON_INTERPRET=1 instead of depending on the order test folders are collected.
"""
import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import torch
    from fusekernels.loss import fusion_loss, teacher_topk
    from tests.loss.api_reference import make_case

    case = make_case(seed=7, lead=(2, 3), vocab=41, n_teachers=2, k=3)
    cols = (case["labels"], case["teacher_ids"], case["teacher_logits"])
    for dtype in (torch.float32, torch.bfloat16):
        for options in (dict(fusion="avgce", return_components=True),
                        dict(reduction="none", loss_type="ce", temperature=0.5),
                        dict(inplace_backward=True, lam=0.3)):
            results = []
            for backend in ("torch", "triton"):
                leaf = case["logits"].detach().to(dtype).clone().requires_grad_(True)
                out = fusion_loss(leaf * 1, *cols, teacher_ce=case["teacher_ce"], backend=backend, **options)
                loss = out.loss if isinstance(out, tuple) else out
                loss.sum().backward()
                results.append((out, leaf.grad.float()))
            (a, ga), (b, gb) = results
            for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
                torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(ga, gb, rtol=0, atol=1e-6 if dtype == torch.float32 else 1e-2)
    with torch.no_grad():  # no gradient wanted: inplace_backward must leave the logits alone
        frozen = case["logits"].detach().clone()
        loss = fusion_loss(frozen, *cols, teacher_ce=case["teacher_ce"], backend="triton", inplace_backward=True)
        assert torch.equal(frozen, case["logits"].detach())
        reference = fusion_loss(frozen, *cols, teacher_ce=case["teacher_ce"], backend="torch")
        torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-5)
    a = teacher_topk(case["logits"], case["labels"], k=4, backend="torch")
    b = teacher_topk(case["logits"], case["labels"], k=4, backend="triton")
    torch.testing.assert_close(a.values, b.values)
    torch.testing.assert_close(a.lse, b.lse, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.ce, b.ce, rtol=1e-5, atol=1e-5)
    print("DISPATCH-OK")
""")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
@pytest.mark.skipif(not (ROOT / "fusekernels" / "kernels" / "fusion_loss_triton.py").exists(),
                    reason="the Triton kernels are not part of this checkout")
def test_public_api_dispatches_to_triton_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "DISPATCH-OK" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.skipif(not (ROOT / "fusekernels" / "loss" / "fused_linear.py").exists(),
                    reason="fused_linear is not part of this checkout")
def test_fused_linear_is_exported_lazily():
    import fusekernels.loss as loss
    from fusekernels.loss.fused_linear import fused_linear_fusion_loss

    assert loss.fused_linear_fusion_loss is fused_linear_fusion_loss
    with pytest.raises(AttributeError):
        loss.no_such_name


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_auto_backend_on_cuda_matches_torch_path():
    import torch

    from fusekernels.loss import fusion_loss
    from tests.loss.api_reference import make_case

    case = make_case(seed=8, lead=(4, 64), vocab=32000, n_teachers=3, k=10)
    results = []
    for device, backend in (("cuda", "auto"), ("cuda", "torch")):
        cols = [case[name].to(device) for name in ("labels", "teacher_ids", "teacher_logits", "teacher_ce")]
        logits = case["logits"].to(device, torch.bfloat16).requires_grad_(True)
        loss = fusion_loss(logits, *cols[:3], teacher_ce=cols[3], backend=backend, fusion="avgce")
        loss.backward()
        results.append((loss.float().cpu(), logits.grad.float().cpu()))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=8e-3, atol=1e-7)  # one bf16 ulp
