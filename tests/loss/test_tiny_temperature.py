"""Issue 10.3: teacher softmax at temperatures where ``teacher_logits / T`` overflows.

At T = 1e-40 the scaled logits exceed the float32 range; the teacher softmax must still be the
(near) one-hot of the float64 reference on both backends, with a finite loss and gradient.
"""
import pytest
import torch

from fusekernels.loss import fusion_loss
from tests.reference.dense_fusion import dense_fusion_rows

TINY = (1e-40, 1e-30, 1e-50)


def _case(seed=0, n=6, vocab=50, teachers=2, k=4):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, vocab, generator=gen) * 3
    labels = torch.randint(0, vocab, (n,), generator=gen)
    ids = torch.stack([torch.randperm(vocab, generator=gen)[:teachers * k] for _ in range(n)]).reshape(n, teachers, k)
    t_logits = torch.randn(n, teachers, k, generator=gen) * 3 + 5.0  # |logit| / 1e-40 overflows float32
    t_logits[0, 1, 2:] = float("-inf")                                # padding entries
    t_logits[1, 0, 1] = t_logits[1, 0, 0]                             # a tie for the max: mass split in two
    ce = torch.rand(n, teachers, generator=gen)
    return logits, labels, ids.to(torch.int32), t_logits, ce


def _reference(logits, labels, ids, t_logits, weights, temperature, lam=0.9):
    z = logits.double().requires_grad_()
    n = len(labels)
    rows = dense_fusion_rows(z, labels, ids, t_logits, weights, torch.full((n,), lam / n),
                             torch.full((n,), (1 - lam) / n), temperature=temperature)
    rows.sum().backward()
    return rows.sum().detach(), z.grad


@pytest.mark.parametrize("temperature", TINY)
def test_torch_backend_tiny_temperature(temperature):
    logits, labels, ids, t_logits, ce = _case()
    z = logits.clone().requires_grad_()
    loss = fusion_loss(z, labels, ids, t_logits, teacher_ce=ce, fusion="avgce", temperature=temperature,
                       backend="torch")
    loss.backward()
    reward = torch.exp(-ce.double())
    ref, ref_grad = _reference(logits, labels, ids, t_logits, torch.softmax(reward, -1), temperature)
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z.grad.double(), ref_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("temperature", TINY)
def test_triton_kernel_tiny_temperature(temperature):
    pytest.importorskip("triton")
    from fusekernels.kernels.fusion_loss_triton import fusion_loss_rows_triton

    logits, labels, ids, t_logits, ce = _case(seed=1)
    n = len(labels)
    weights = torch.softmax(torch.exp(-ce), -1).float()
    clm_scale, fusion_scale = torch.full((n,), 0.9 / n), torch.full((n,), 0.1 / n)
    loss, grad = fusion_loss_rows_triton(logits, labels, ids, t_logits, weights, clm_scale, fusion_scale,
                                         temperature=temperature, loss_type="kl", ignore_index=-100,
                                         compute_grad=True, grad_inplace=False)
    ref, ref_grad = _reference(logits, labels, ids, t_logits, weights, temperature)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    torch.testing.assert_close(loss.sum().double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-6)
