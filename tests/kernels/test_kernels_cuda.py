"""Compiled kernels on a real GPU at realistic sizes (skipped without CUDA)."""
import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

triton = pytest.importorskip("triton")
from fusekernels.kernels.fusion_loss_triton import fusion_loss_rows_triton  # noqa: E402
from fusekernels.kernels.teacher_topk_triton import teacher_topk_rows_triton  # noqa: E402
from tests.reference.dense_fusion import dense_fusion_rows  # noqa: E402


def _case(n, vocab, teachers, k, dtype, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    logits = (torch.randn(n, vocab, device="cuda", generator=gen) * 3).to(dtype)
    labels = torch.randint(0, vocab, (n,), device="cuda", generator=gen)
    labels[::7] = -100
    ids = torch.randint(0, vocab, (n, teachers, k), device="cuda", generator=gen, dtype=torch.int32)
    ids[::5, 1] = ids[::5, 0]
    t_logits = torch.randn(n, teachers, k, device="cuda", generator=gen) * 2
    t_logits[::3, 0, k // 2:] = float("-inf")
    weights = torch.softmax(torch.randn(n, teachers, device="cuda", generator=gen), -1)
    clm_scale = torch.full((n,), 0.9 / n, device="cuda")
    fusion_scale = torch.full((n,), 0.1 / n, device="cuda")
    clm_scale[-3:] = 0
    fusion_scale[-3:] = 0
    return logits, labels, ids, t_logits, weights, clm_scale, fusion_scale


@pytest.mark.parametrize("vocab", [32000, 50257])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("loss_type", ["kl", "ce"])
def test_fusion_loss_matches_reference(vocab, dtype, loss_type):
    inputs = _case(64, vocab, 3, 10, dtype)
    loss, grad = fusion_loss_rows_triton(*inputs, temperature=1.3, loss_type=loss_type, ignore_index=-100,
                                         compute_grad=True, grad_inplace=False)
    z = inputs[0].double().requires_grad_()
    ref = dense_fusion_rows(z, *inputs[1:], temperature=1.3, loss_type=loss_type)
    ref.sum().backward()
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    rtol = 1e-5 if dtype == torch.float32 else 8e-3
    torch.testing.assert_close(grad.double(), z.grad, rtol=rtol, atol=rtol * z.grad.abs().max().item())
    assert (grad[-3:] == 0).all()
    # In place: same numbers, written over the logits.
    logits = inputs[0].clone()
    loss2, grad2 = fusion_loss_rows_triton(logits, *inputs[1:], temperature=1.3, loss_type=loss_type,
                                           ignore_index=-100, compute_grad=True, grad_inplace=True)
    assert grad2.data_ptr() == logits.data_ptr()
    torch.testing.assert_close(loss2, loss)
    torch.testing.assert_close(grad2, grad)


@pytest.mark.parametrize("vocab", [32000, 152064])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_teacher_topk_matches_torch(vocab, dtype):
    logits = (torch.randn(128, vocab, device="cuda") * 4).to(dtype)
    labels = torch.randint(0, vocab, (128,), device="cuda")
    labels[::9] = -100
    ids, values, lse, ce = teacher_topk_rows_triton(logits, labels, 10)
    z = logits.double()
    assert torch.equal(values.double(), torch.topk(z, 10).values)
    assert torch.equal(z.gather(1, ids.long()), values.double())
    want_lse = torch.logsumexp(z, -1)
    torch.testing.assert_close(lse.double(), want_lse, rtol=1e-6, atol=1e-5)
    valid = labels != -100
    want_ce = torch.where(valid, want_lse - z.gather(1, labels.clamp_min(0)[:, None])[:, 0], 0.0)
    torch.testing.assert_close(ce.double(), want_ce, rtol=1e-5, atol=1e-4)
