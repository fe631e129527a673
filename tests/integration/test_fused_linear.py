"""Chunked hidden-states x lm_head loss == fusion_loss on the full logits (values and gradients)."""
import pytest
import torch

from fusekernels.loss.functional import fusion_loss
from fusekernels.loss.fused_linear import default_chunk_rows, fused_linear_fusion_loss
from tests.reference.dense_fusion import dense_fusion_rows

B, T, H, V, NT, K = 3, 7, 16, 97, 2, 5


def make_inputs(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    weight = (0.5 * torch.randn(V, H, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()
    bias = (0.1 * torch.randn(V, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, :3] = -100
    labels[2, -1] = -100
    ids = torch.randint(0, V, (B, T, NT, K), generator=g)
    ids[1, 2, 0, 1] = ids[1, 2, 0, 0]  # a duplicate id
    tlog = torch.randn(B, T, NT, K, generator=g)
    tlog[0, 1, 0, 2:] = float("-inf")
    tlog[2, 3, 1] = float("-inf")      # teacher absent at a row
    ce = torch.rand(B, T, NT, generator=g) * 3
    return hidden, weight, bias, labels, ids, tlog, ce


def grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


OPTIONS = [
    dict(),
    dict(fusion="avgce", loss_type="ce", temperature=2.0, lam=0.3),
    dict(fusion_mask="attention"),
    dict(num_items_in_batch=11),
    dict(fusion_mask="attention", num_items_in_batch=11, num_fusion_items=19),
    dict(reduction="sum", lam=1.0),
    dict(lam=0.0, no_labels=True),
]


@pytest.mark.parametrize("options", OPTIONS, ids=[str(o) for o in OPTIONS])
@pytest.mark.parametrize("chunk_rows", [1, 4, 1000])
@pytest.mark.parametrize("use_bias", [False, True])
def test_matches_fusion_loss_on_full_logits(options, chunk_rows, use_bias):
    hidden, weight, bias, labels, ids, tlog, ce = make_inputs()
    options = dict(options)
    if options.pop("no_labels", False):
        labels = None
    if options.get("fusion_mask") == "attention":
        mask = torch.ones(B, T, dtype=torch.bool)
        mask[1, -2:] = False
        options["fusion_mask"] = mask
    bias = bias if use_bias else None
    params = (hidden, weight) + ((bias,) if use_bias else ())
    logits = hidden @ weight.t() + (bias if use_bias else 0)
    expected = fusion_loss(logits, labels, ids, tlog, teacher_ce=ce, backend="torch", **options)
    expected_grads = grads(expected, params)
    got = fused_linear_fusion_loss(hidden, weight, labels, ids, tlog, bias=bias, teacher_ce=ce, backend="torch",
                                   chunk_rows=chunk_rows, **options)
    got_grads = grads(got, params)
    assert got.shape == () and torch.allclose(got, expected, rtol=1e-12, atol=1e-12)
    for g, e in zip(got_grads, expected_grads):
        assert torch.allclose(g, e, rtol=1e-10, atol=1e-12)


def test_matches_float64_dense_reference():
    hidden, weight, _, labels, ids, tlog, ce = make_inputs()
    got = fused_linear_fusion_loss(hidden, weight, labels, ids, tlog, teacher_ce=ce, fusion="mince", lam=0.9,
                                   chunk_rows=5, backend="torch")
    n = B * T
    valid = labels.reshape(n) != -100
    present = torch.isfinite(tlog).any(-1).reshape(n, NT)
    reward = torch.where(present, torch.exp(-ce.reshape(n, NT)), torch.full((n, NT), -1.0, dtype=ce.dtype))
    weights = torch.nn.functional.one_hot(reward.argmax(-1), NT).double() * present
    count = valid.sum()
    rows = dense_fusion_rows((hidden @ weight.t()).reshape(n, V), labels.reshape(n), ids.reshape(n, NT, K),
                             tlog.reshape(n, NT, K), weights, 0.9 * valid / count, 0.1 * valid / count)
    # the backend contract carries the per-row scales (lam / count) in float32
    assert torch.allclose(got, rows.sum(), rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision(dtype):
    hidden, weight, bias, labels, ids, tlog, ce = make_inputs(dtype)
    logits = torch.addmm(bias, hidden.reshape(-1, H), weight.t()).reshape(B, T, V)
    expected = fusion_loss(logits, labels, ids, tlog, teacher_ce=ce, backend="torch")
    eg = grads(expected, (hidden, weight, bias))
    got = fused_linear_fusion_loss(hidden, weight, labels, ids, tlog, bias=bias, teacher_ce=ce, chunk_rows=4,
                                   backend="torch")
    gg = grads(got, (hidden, weight, bias))
    assert got.dtype == torch.float32
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(got, expected, rtol=tol, atol=tol)
    for g, e in zip(gg, eg):
        assert g.dtype == dtype
        assert torch.allclose(g.float(), e.float(), rtol=tol, atol=tol * float(e.float().abs().max()))


def test_components_no_grad_and_backward_scaling():
    hidden, weight, _, labels, ids, tlog, ce = make_inputs()
    out = fused_linear_fusion_loss(hidden, weight, labels, ids, tlog, teacher_ce=ce, return_components=True,
                                   chunk_rows=3, backend="torch")
    ref = fusion_loss(hidden @ weight.t(), labels, ids, tlog, teacher_ce=ce, return_components=True, backend="torch")
    for a, b in zip(out, ref):
        assert torch.allclose(a, b, rtol=1e-12)
    assert not out.clm_loss.requires_grad
    # grad_output != 1 scales all gradients
    (g2,) = torch.autograd.grad(3.0 * out.loss, hidden)
    (g1,) = torch.autograd.grad(ref.loss, hidden)
    assert torch.allclose(g2, 3.0 * g1, rtol=1e-10)
    with torch.no_grad():
        value = fused_linear_fusion_loss(hidden, weight, labels, ids, tlog, teacher_ce=ce, backend="torch")
    assert not value.requires_grad and torch.allclose(value, ref.loss)


def test_default_chunking_bounds_the_logits_buffer():
    cpu_rows, gpu_rows = default_chunk_rows(32000, "cpu"), default_chunk_rows(32000, "cuda")
    assert 256 <= cpu_rows and cpu_rows * 32000 * 4 <= 64 * 2**20
    assert gpu_rows > cpu_rows and gpu_rows * 32000 * 4 <= 256 * 2**20
    assert default_chunk_rows(10**9) == 1


def test_bad_input():
    hidden, weight, bias, labels, ids, tlog, ce = make_inputs(torch.float32)
    kwargs = dict(teacher_ce=ce, backend="torch")
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum'"):
        fused_linear_fusion_loss(hidden, weight, labels, ids, tlog, reduction="none", **kwargs)
    with pytest.raises(ValueError, match="weight must be \\[V, H\\]"):
        fused_linear_fusion_loss(hidden, weight[:, :5], labels, ids, tlog, **kwargs)
    with pytest.raises(TypeError, match="weight dtype"):
        fused_linear_fusion_loss(hidden, weight.double(), labels, ids, tlog, **kwargs)
    with pytest.raises(ValueError, match="bias must be"):
        fused_linear_fusion_loss(hidden, weight, labels, ids, tlog, bias=bias[:3], **kwargs)
    with pytest.raises(ValueError, match="labels must have leading shape"):
        fused_linear_fusion_loss(hidden, weight, labels[:, :2], ids, tlog, **kwargs)
    with pytest.raises(ValueError, match="teacher_ids must have leading shape"):
        fused_linear_fusion_loss(hidden, weight, labels, ids[0], tlog, **kwargs)
    with pytest.raises(ValueError, match="chunk_rows"):
        fused_linear_fusion_loss(hidden, weight, labels, ids, tlog, chunk_rows=0, **kwargs)
    bad = ids.clone()
    bad[0, 0, 0, 0] = V
    with pytest.raises(ValueError, match="teacher_ids out of range"):
        fused_linear_fusion_loss(hidden, weight, labels, bad, tlog, **kwargs)
