"""Row-level torch backend vs the float64 dense reference of the backend contract."""
import pytest
import torch

from fusekernels.loss.torch_backend import fusion_loss_rows_torch, fusion_loss_terms_torch, teacher_topk_rows_torch
from tests.reference.dense_fusion import dense_fusion_rows

TOL = {torch.float32: 2e-5, torch.float64: 1e-12, torch.bfloat16: 2e-5, torch.float16: 2e-5}
GRAD_TOL = {torch.float32: 2e-6, torch.float64: 1e-14, torch.bfloat16: 8e-3, torch.float16: 1e-3}


def make_rows(seed, n=9, vocab=53, n_teachers=3, k=5, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, vocab, generator=gen) * 3).to(dtype)
    logits[0, :7] = float("-inf")                    # some -inf student logits
    logits[2] = float("-inf")                        # a fully -inf row (scales 0 below)
    labels = torch.randint(0, vocab, (n,), generator=gen)
    labels[0] = 10                                   # finite logit at the label
    labels[1] = -100
    ids = torch.randint(0, vocab, (n, n_teachers, k), generator=gen, dtype=torch.int32)
    ids[0] = torch.randint(7, vocab, (n_teachers, k), generator=gen, dtype=torch.int32)
    ids[3, 0, 1] = ids[3, 1, 2]                       # duplicate across teachers
    ids[4, 0, 0] = ids[4, 0, 3]                       # duplicate within a teacher
    t_logits = torch.randn(n, n_teachers, k, generator=gen) * 2
    t_logits[5, 1, 2:] = float("-inf")                # fewer than k entries
    t_logits[6, 2] = float("-inf")                    # teacher absent at a row
    weights = torch.softmax(torch.randn(n, n_teachers, generator=gen), -1)
    weights[6, 2] = 0
    weights[6] /= weights[6].sum()
    weights[7] = 0                                    # no teacher: no fusion term
    clm_scale = torch.rand(n, generator=gen)
    fusion_scale = torch.rand(n, generator=gen)
    clm_scale[1] = 0
    clm_scale[2] = fusion_scale[2] = 0
    return logits, labels, ids, t_logits, weights, clm_scale, fusion_scale


def reference(logits, labels, ids, t_logits, weights, clm_scale, fusion_scale, temperature, loss_type):
    z = logits.detach().double().clone().requires_grad_(True)
    rows = dense_fusion_rows(z, labels, ids, t_logits, weights, clm_scale, fusion_scale,
                             temperature=temperature, loss_type=loss_type)
    rows = torch.nan_to_num(rows, nan=0.0)        # the all -inf row with zero scales
    rows.sum().backward()
    return rows.detach(), torch.nan_to_num(z.grad, nan=0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("loss_type", ["kl", "ce"])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_rows_match_dense_reference(dtype, loss_type, temperature):
    args = make_rows(1, dtype=dtype)
    ref_loss, ref_grad = reference(*args, temperature, loss_type)
    loss, grad = fusion_loss_rows_torch(*args, temperature=temperature, loss_type=loss_type,
                                        ignore_index=-100, compute_grad=True, grad_inplace=False)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert grad.dtype == dtype and grad.shape == args[0].shape
    assert not torch.isnan(loss).any() and not torch.isnan(grad).any()
    torch.testing.assert_close(loss.double(), ref_loss, rtol=TOL[dtype], atol=TOL[dtype])
    torch.testing.assert_close(grad.double(), ref_grad, rtol=0, atol=GRAD_TOL[dtype])
    assert loss[2] == 0 and (grad[2] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inplace_gradient_and_no_grad(dtype):
    args = make_rows(2, dtype=dtype)
    kwargs = dict(temperature=1.0, loss_type="kl", ignore_index=-100)
    ref_loss, ref_grad = fusion_loss_rows_torch(*args, compute_grad=True, grad_inplace=False, **kwargs)
    buffer = args[0].clone()
    loss, grad = fusion_loss_rows_torch(buffer, *args[1:], compute_grad=True, grad_inplace=True, **kwargs)
    assert grad.data_ptr() == buffer.data_ptr()
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=0)
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=0)
    before = args[0].clone()
    loss_only, none = fusion_loss_rows_torch(*args, compute_grad=False, grad_inplace=False, **kwargs)
    assert none is None and torch.equal(args[0], before)
    torch.testing.assert_close(loss_only, ref_loss, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("compute_grad,grad_inplace", [(True, False), (True, True), (False, False)])
def test_chunking_is_invisible(dtype, compute_grad, grad_inplace):
    args = make_rows(3, n=23, dtype=dtype)
    kwargs = dict(temperature=0.8, loss_type="kl", ignore_index=-100, compute_grad=compute_grad)
    whole = fusion_loss_terms_torch(*args, grad_inplace=False, **kwargs)
    buffer = args[0].clone()                                                  # 4 rows per chunk:
    chunked = fusion_loss_terms_torch(buffer, *args[1:], grad_inplace=grad_inplace, chunk_bytes=4 * 53 * 4, **kwargs)
    for a, b in zip(whole, chunked):
        if a is None:
            assert b is None
            continue
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, equal_nan=True)
    assert grad_inplace == (chunked[1] is not None and chunked[1].data_ptr() == buffer.data_ptr())


def test_terms_recombine_to_row_loss():
    args = make_rows(4)
    row, _, clm, fus = fusion_loss_terms_torch(*args, temperature=1.0, loss_type="ce", ignore_index=-100,
                                               compute_grad=False, grad_inplace=False)
    clm_scale, fusion_scale = args[5], args[6]
    keep = (clm_scale > 0) | (fusion_scale > 0)
    torch.testing.assert_close(row[keep], (clm_scale * clm + fusion_scale * fus)[keep])


def test_kl_is_zero_when_student_equals_target():
    vocab = 11
    ids = torch.tensor([[[1, 4, 7]]], dtype=torch.int32)
    t_logits = torch.tensor([[[0.3, -1.0, 2.0]]])
    logits = torch.full((1, vocab), -1e4)
    logits[0, ids[0, 0].long()] = t_logits[0, 0]
    loss, grad = fusion_loss_rows_torch(logits, torch.tensor([-100]), ids, t_logits, torch.ones(1, 1),
                                        torch.zeros(1), torch.ones(1), temperature=1.0, loss_type="kl",
                                        ignore_index=-100, compute_grad=True, grad_inplace=False)
    assert abs(loss.item()) < 1e-6 and grad.abs().max() < 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_teacher_topk_rows(dtype):
    gen = torch.Generator().manual_seed(5)
    logits = (torch.randn(13, 97, generator=gen) * 4).to(dtype)
    labels = torch.randint(0, 97, (13,), generator=gen)
    labels[3] = -100
    ids, values, lse, ce = teacher_topk_rows_torch(logits, labels, 6, chunk_bytes=4 * 97 * 5)
    z = logits.double()
    ref_values, _ = z.topk(6, dim=-1)
    assert ids.dtype == torch.int32 and values.dtype == torch.float32
    torch.testing.assert_close(values.double(), ref_values)
    torch.testing.assert_close(z.gather(1, ids.long()), ref_values)  # ids point at those values
    ref_lse = torch.logsumexp(z, -1)
    torch.testing.assert_close(lse.double(), ref_lse, rtol=1e-6, atol=1e-5)
    ref_ce = torch.where(labels != -100, ref_lse - z.gather(1, labels.clamp_min(0)[:, None])[:, 0], 0.0)
    torch.testing.assert_close(ce.double(), ref_ce, rtol=1e-6, atol=1e-5)
    assert ce[3] == 0


try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # hypothesis is a dev extra
    given = None

if given is not None:
    @settings(max_examples=25, deadline=None)
    @given(seed=st.integers(0, 10_000), n=st.integers(1, 6), vocab=st.integers(2, 40),
           n_teachers=st.integers(1, 3), k=st.integers(1, 6), temperature=st.floats(0.3, 3.0),
           loss_type=st.sampled_from(["kl", "ce"]))
    def test_random_shapes_match_reference(seed, n, vocab, n_teachers, k, temperature, loss_type):
        gen = torch.Generator().manual_seed(seed)
        logits = torch.randn(n, vocab, generator=gen) * 4
        labels = torch.randint(-1, vocab, (n,), generator=gen)
        labels[labels < 0] = -100
        ids = torch.randint(0, min(vocab, 4 if seed % 2 else vocab), (n, n_teachers, k), generator=gen,
                            dtype=torch.int32)  # odd seeds: many duplicate ids
        t_logits = torch.randn(n, n_teachers, k, generator=gen) * 3
        t_logits[torch.rand(n, n_teachers, k, generator=gen) < 0.3] = float("-inf")
        weights = torch.rand(n, n_teachers, generator=gen) * torch.isfinite(t_logits).any(-1)
        weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-12)
        clm_scale, fusion_scale = torch.rand(n, generator=gen), torch.rand(n, generator=gen)
        args = (logits, labels, ids, t_logits, weights, clm_scale, fusion_scale)
        ref_loss, ref_grad = reference(*args, temperature, loss_type)
        loss, grad = fusion_loss_rows_torch(*args, temperature=temperature, loss_type=loss_type,
                                            ignore_index=-100, compute_grad=True, grad_inplace=False)
        torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad.double(), ref_grad, rtol=0, atol=1e-6)


@pytest.mark.parametrize("loss_type", ["kl", "ce"])
def test_all_neg_inf_row_has_no_loss_and_no_gradient(loss_type):
    # Same convention as the Triton kernel: a row with no distribution contributes nothing.
    torch.manual_seed(0)
    n, v, t, k = 3, 40, 2, 4
    logits = torch.randn(n, v)
    logits[1] = float("-inf")
    labels = torch.tensor([1, 2, 3])
    ids = torch.randint(0, v, (n, t, k), dtype=torch.int32)
    tlog, w = torch.randn(n, t, k), torch.full((n, t), 0.5)
    ones = torch.ones(n)
    rows, grad = fusion_loss_rows_torch(logits, labels, ids, tlog, w, ones, ones, temperature=1.0,
                                        loss_type=loss_type, ignore_index=-100, compute_grad=True,
                                        grad_inplace=False)
    assert rows[1] == 0 and torch.all(grad[1] == 0)
    assert torch.isfinite(rows).all() and torch.isfinite(grad).all()
    keep = torch.tensor([0, 2])
    ref = dense_fusion_rows(logits[keep], labels[keep], ids[keep], tlog[keep], w[keep], ones[keep],
                            ones[keep], loss_type=loss_type)
    torch.testing.assert_close(rows[keep].double(), ref, rtol=1e-5, atol=1e-5)
