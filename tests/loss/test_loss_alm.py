"""loss_type="alm" (approximate likelihood matching of aligned chunks) against the float64
reference written from the paper's formulas, on the torch backend, the Triton kernel under the
interpreter and the chunked LM-head path; gradient checks; bad input."""
import pytest
import torch

from fusekernels.loss import fusion_loss
from tests.reference.alm_reference import alm_loss_reference


def _batch(seed, B=2, L=9, V=17, T=2, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(B, L, V, generator=g)).to(dtype)
    labels = torch.randint(0, V, (B, L), generator=g)
    labels[1, 0] = -100
    span = torch.zeros(B, L, T, dtype=torch.int64)
    lp = torch.zeros(B, L, T, dtype=torch.float64)
    for b in range(B):
        for t in range(T):  # chunks tiling each sequence, lengths 1..3, some teachers shorter
            e = int(torch.randint(0, 2, (1,), generator=g))
            while e < L:
                s = int(torch.randint(1, 4, (1,), generator=g))
                e = e + s
                if e - 1 < L:
                    span[b, e - 1, t] = s
                    lp[b, e - 1, t] = -float(torch.rand(1, generator=g)) * 4 * s
    span[0, 1, 0] = 3  # reaches before the sequence start: ignored
    ce = torch.rand(B, L, T, generator=g, dtype=torch.float64) * 3
    return logits, labels, span, lp, ce


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("fusion", ["mince", "avgce"])
@pytest.mark.parametrize("tau", [1.0, 7.0])
def test_matches_reference_value_and_gradient(seed, fusion, tau):
    logits, labels, span, lp, ce = _batch(seed)
    ours_in = logits.clone().requires_grad_()
    ref_in = logits.clone().requires_grad_()
    ours = fusion_loss(ours_in, labels, None, None, teacher_chunk_span=span, teacher_chunk_logprob=lp,
                       teacher_ce=ce, fusion=fusion, loss_type="alm", lam=0.4, alm_temperature=tau, backend="torch")
    ref = alm_loss_reference(ref_in, labels, span, lp, ce, lam=0.4, tau=tau, fusion=fusion)
    ours.backward()
    ref.backward()
    tol = 1e-10 if fusion == "mince" else 1e-7  # AvgCE rewards are computed in fp32 (as published)
    assert torch.allclose(ours, ref, rtol=tol, atol=1e-12)
    assert torch.allclose(ours_in.grad, ref_in.grad, rtol=max(tol, 1e-8), atol=1e-10)


def test_gradcheck_torch_backend():
    logits, labels, span, lp, ce = _batch(3, L=6, V=7)
    z = logits.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: fusion_loss(x, labels, None, None, teacher_chunk_span=span, teacher_chunk_logprob=lp,
                              teacher_ce=ce, loss_type="alm", lam=0.3, alm_temperature=2.0, backend="torch"), (z,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_interpreter_matches_reference(dtype):
    pytest.importorskip("triton")
    logits, labels, span, lp, ce = _batch(11)
    z = logits.to(dtype).requires_grad_()
    out = fusion_loss(z, labels, None, None, teacher_chunk_span=span, teacher_chunk_logprob=lp.float(),
                      teacher_ce=ce.float(), loss_type="alm", lam=0.5, backend="triton", return_components=True)
    out.loss.backward()
    ref_in = z.detach().double().requires_grad_()
    ref = alm_loss_reference(ref_in, labels, span, lp, ce, lam=0.5)
    ref.backward()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert abs(float(out.loss) - float(ref)) <= tol * max(1.0, abs(float(ref)))
    assert torch.allclose(z.grad.double(), ref_in.grad, rtol=tol, atol=tol * 0.1)
    torch_out = fusion_loss(z.detach(), labels, None, None, teacher_chunk_span=span, teacher_chunk_logprob=lp.float(),
                            teacher_ce=ce.float(), loss_type="alm", lam=0.5, backend="torch", return_components=True)
    for a, b in zip(out, torch_out):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_components_and_reductions():
    logits, labels, span, lp, ce = _batch(5)
    kwargs = dict(teacher_chunk_span=span, teacher_chunk_logprob=lp, teacher_ce=ce, loss_type="alm",
                  backend="torch")
    out = fusion_loss(logits, labels, None, None, lam=0.25, return_components=True, **kwargs)
    assert torch.allclose(out.loss, 0.25 * out.clm_loss + 0.75 * out.fusion_loss)
    pure = fusion_loss(logits, labels, None, None, lam=0.0, **kwargs)
    assert torch.allclose(pure, out.fusion_loss)
    rows = fusion_loss(logits, labels, None, None, lam=0.25, reduction="none", **kwargs)
    summed = fusion_loss(logits, labels, None, None, lam=0.25, reduction="sum", **kwargs)
    assert rows.shape == labels.shape and torch.allclose(rows.sum(), summed)


def test_matching_chunks_have_zero_fusion_term():
    logits, labels, span, _, ce = _batch(2)
    row_lp = torch.log_softmax(logits, -1).gather(-1, labels.clamp_min(0)[..., None])[..., 0]
    lp = torch.zeros_like(span, dtype=torch.float64)
    for b, e, t in torch.nonzero(span).tolist():
        s = int(span[b, e, t])
        lp[b, e, t] = row_lp[b, max(e - s + 1, 0):e + 1].sum()
    out = fusion_loss(logits, labels, None, None, teacher_chunk_span=span, teacher_chunk_logprob=lp, teacher_ce=ce,
                      loss_type="alm", lam=0.0, backend="torch")
    assert abs(float(out)) < 1e-9


def test_fused_lm_head_equals_full_logits():
    from fusekernels.loss.fused_linear import fused_linear_fusion_loss

    g = torch.Generator().manual_seed(0)
    _, labels, span, lp, ce = _batch(7, V=23)
    hidden = torch.randn(2, 9, 5, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(23, 5, generator=g, dtype=torch.float64, requires_grad=True)
    kwargs = dict(teacher_chunk_span=span, teacher_chunk_logprob=lp, teacher_ce=ce, loss_type="alm", lam="soft",
                  backend="torch")
    fused = fused_linear_fusion_loss(hidden, weight, labels, None, None, chunk_rows=4, **kwargs)
    fused.backward()
    gh, gw = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    full = fusion_loss(hidden @ weight.T, labels, None, None, **kwargs)
    full.backward()
    assert torch.allclose(fused, full, rtol=1e-12)
    assert torch.allclose(gh, hidden.grad, rtol=1e-10) and torch.allclose(gw, weight.grad, rtol=1e-10)


def test_bad_chunk_inputs_name_the_argument():
    logits, labels, span, lp, ce = _batch(1)
    base = dict(teacher_ce=ce, loss_type="alm", backend="torch")
    with pytest.raises(ValueError, match="teacher_chunk_span"):
        fusion_loss(logits, labels, None, None, teacher_chunk_logprob=lp, **base)
    with pytest.raises(ValueError, match="teacher_chunk_logprob"):
        fusion_loss(logits, labels, None, None, teacher_chunk_span=span, **base)
    with pytest.raises(ValueError, match=r"teacher_chunk_logprob must be finite and <= 0"):
        fusion_loss(logits, labels, None, None, teacher_chunk_span=span, teacher_chunk_logprob=-lp + 1, **base)
    with pytest.raises(ValueError, match="teacher_chunk_span must be >= 0"):
        fusion_loss(logits, labels, None, None, teacher_chunk_span=-span, teacher_chunk_logprob=lp, **base)
    with pytest.raises(ValueError, match="shape"):
        fusion_loss(logits, labels, None, None, teacher_chunk_span=span[:, :3], teacher_chunk_logprob=lp, **base)
    with pytest.raises(ValueError, match="labels are needed"):
        fusion_loss(logits, None, None, None, teacher_chunk_span=span, teacher_chunk_logprob=lp, lam=0.0, **base)
    with pytest.raises(ValueError, match="alm_temperature"):
        fusion_loss(logits, labels, None, None, teacher_chunk_span=span, teacher_chunk_logprob=lp, alm_temperature=0,
                    **base)
    with pytest.raises(ValueError, match="published"):
        fusion_loss(logits, labels, None, None, teacher_chunk_span=span, teacher_chunk_logprob=lp,
                    precision="published", **base)
