"""Triton fusion-loss kernel vs the float64 dense reference (CPU interpreter; small shapes).

The reference sees the logits after rounding to the tested dtype, so the comparison measures only
the kernel's fp32 arithmetic and the final rounding of the gradient to the logits dtype.
"""
import pytest
import torch

from tests.reference.dense_fusion import dense_fusion_rows

triton = pytest.importorskip("triton")
from fusekernels.kernels.fusion_loss_triton import MAX_TEACHER_ENTRIES, fusion_loss_rows_triton, launch_fusion_loss_rows  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy inf arithmetic in the interpreter

NEG_INF = float("-inf")
GRAD_RTOL = {torch.float32: 1e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3}


def make_case(seed, n=8, vocab=300, teachers=3, k=4, dtype=torch.float32, ignore_index=-100):
    """Random inputs with the awkward structures the contract allows (documented per row; the
    first ``n`` of six structured rows are kept when n < 6)."""
    gen = torch.Generator().manual_seed(seed)
    n_rows, n = n, max(n, 6)
    logits = (torch.randn(n, vocab, generator=gen) * 4).to(dtype)
    labels = torch.randint(0, vocab, (n,), generator=gen)
    ids = torch.randint(0, vocab, (n, teachers, k), generator=gen, dtype=torch.int32)
    t_logits = torch.randn(n, teachers, k, generator=gen) * 3
    weights = torch.softmax(torch.randn(n, teachers, generator=gen), dim=-1)
    ids[0, 0, 1] = ids[0, 0, 0]                      # row 0: duplicate id inside one teacher
    if teachers > 1:
        ids[1, 1] = ids[1, 0]                        # row 1: same ids across two teachers
        t_logits[2, 1, :] = NEG_INF                  # row 2: teacher 1 absent -> renormalise
        weights[2] = torch.zeros(teachers)
        weights[2, 0] = 1.0 if teachers == 2 else 0.4
        weights[2, 2:] = 0.6 / max(teachers - 2, 1)
    t_logits[3, 0, k // 2:] = NEG_INF                # row 3: fewer than k entries
    labels[4] = ignore_index                         # row 4: no CLM term
    ids[5, 0, 0] = labels[5]                         # row 5: label is also a teacher id
    return tuple(x[:n_rows].contiguous() for x in (logits, labels, ids, t_logits, weights.float()))


def scales(n, lam=0.9, clm=None, fus=None):
    clm_scale = torch.full((n,), lam / n) if clm is None else clm
    fusion_scale = torch.full((n,), (1 - lam) / n) if fus is None else fus
    return clm_scale.float(), fusion_scale.float()


def reference(logits, labels, ids, t_logits, weights, clm_scale, fusion_scale, **kw):
    """(loss [N], grad [N, V]) in float64 via autograd through the dense reference."""
    z = logits.double().requires_grad_()
    loss = dense_fusion_rows(z, labels, ids, t_logits, weights, clm_scale, fusion_scale, **kw)
    # Rows whose loss is inf (q > 0 on a -inf logit) would poison autograd; none are used here.
    loss.sum().backward()
    return loss.detach(), z.grad


def run_kernel(logits, labels, ids, t_logits, weights, clm_scale, fusion_scale, *, block_v=64,
               temperature=1.0, loss_type="kl", ignore_index=-100, compute_grad=True, grad_inplace=False):
    return launch_fusion_loss_rows(
        logits, labels, ids, t_logits, weights, clm_scale, fusion_scale, temperature=temperature,
        loss_type=loss_type, ignore_index=ignore_index, compute_grad=compute_grad,
        grad_inplace=grad_inplace, block_v=block_v)


def assert_matches(loss, grad, ref_loss, ref_grad, dtype):
    assert loss.dtype == torch.float32 and torch.isfinite(loss).all()
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-6)
    assert grad.dtype == dtype and torch.isfinite(grad).all()
    tol = GRAD_RTOL[dtype] * ref_grad.abs().max().item()
    torch.testing.assert_close(grad.double(), ref_grad, rtol=GRAD_RTOL[dtype], atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("loss_type", ["kl", "ce"])
def test_matches_reference_over_chunks(dtype, loss_type):
    """V = 300 streamed in 64-wide chunks (last one partial), temperature != 1, all row kinds."""
    inputs = make_case(seed=1, dtype=dtype)
    sc = scales(8)
    loss, grad = run_kernel(*inputs, *sc, temperature=1.7, loss_type=loss_type)
    ref_loss, ref_grad = reference(*inputs, *sc, temperature=1.7, loss_type=loss_type)
    assert_matches(loss, grad, ref_loss, ref_grad, dtype)


def test_public_entry_point_single_chunk_and_default_config():
    """The contract function (default launch config: the whole row in one chunk)."""
    inputs = make_case(seed=2, n=6, vocab=200, teachers=2, k=5)
    sc = scales(6, lam=0.5)
    loss, grad = fusion_loss_rows_triton(*inputs, *sc, temperature=0.8, loss_type="kl", ignore_index=-100,
                                         compute_grad=True, grad_inplace=False)
    assert_matches(loss, grad, *reference(*inputs, *sc, temperature=0.8), torch.float32)


def test_fusion_only_and_clm_only_rows():
    """lam = 1 (CLM only) and lam = 0 (fusion only), including a row with all labels ignored."""
    logits, labels, ids, t_logits, weights = make_case(seed=3)
    for lam in (0.0, 1.0):
        sc = scales(8, lam=lam)
        out = run_kernel(logits, labels, ids, t_logits, weights, *sc, loss_type="ce")
        assert_matches(*out, *reference(logits, labels, ids, t_logits, weights, *sc, loss_type="ce"), torch.float32)
    ignored = torch.full_like(labels, -100)
    sc = scales(8, lam=0.9)
    out = run_kernel(logits, ignored, ids, t_logits, weights, *sc)
    assert_matches(*out, *reference(logits, ignored, ids, t_logits, weights, *sc), torch.float32)


def test_custom_ignore_index_and_single_teacher():
    logits, labels, ids, t_logits, weights = make_case(seed=4, teachers=1, k=3, ignore_index=7)
    weights = torch.ones_like(weights)
    sc = scales(8, lam=0.7)
    out = run_kernel(logits, labels, ids, t_logits, weights, *sc, ignore_index=7)
    assert_matches(*out, *reference(logits, labels, ids, t_logits, weights, *sc, ignore_index=7), torch.float32)


def test_neg_inf_student_logits():
    """-inf logits away from the targets, and on an id of a zero-weight (mince-dropped) teacher."""
    logits, labels, ids, t_logits, weights = make_case(seed=5, n=4, teachers=2, k=3)
    weights = torch.tensor([[1.0, 0.0]] * 4)
    logits[:, 250:] = NEG_INF                       # masked vocabulary tail, no target there
    logits[1, :140] = NEG_INF                       # two leading all -inf chunks (block_v = 64)
    ids[:, :, :] = ids % 250
    ids[1] = 140 + ids[1] % 110
    labels[1] = 200
    logits[0, ids[0, 1, 0].long()] = NEG_INF        # only the zero-weight teacher points here
    ids[0, 0] = torch.where(ids[0, 0] == ids[0, 1, 0], (ids[0, 0] + 1) % 250, ids[0, 0])
    labels = labels % 250
    labels[0] = torch.where(labels[0] == ids[0, 1, 0], (labels[0] + 2) % 250, labels[0])
    sc = scales(4)
    out = run_kernel(logits, labels, ids, t_logits, weights, *sc)
    ref_loss, ref_grad = reference(logits, labels, ids, t_logits, weights, *sc)
    assert_matches(*out, ref_loss, ref_grad, torch.float32)
    assert (out[1][:, 250:] == 0).all()


def test_target_on_neg_inf_logit_gives_inf_loss_not_nan():
    logits, labels, ids, t_logits, weights = make_case(seed=6, n=2, teachers=1, k=2)
    weights = torch.ones_like(weights)
    logits[0, ids[0, 0, 0].long()] = NEG_INF
    loss, _ = run_kernel(logits, labels, ids, t_logits, weights, *scales(2), compute_grad=False)
    assert loss[0] == float("inf") and torch.isfinite(loss[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_zero_scale_rows_are_exactly_zero(dtype):
    """Rows with both scales 0 (padding) give loss 0 and grad 0, even with all -inf or NaN logits;
    so does a row with non-zero scales whose logits are all -inf (it has no distribution)."""
    logits, labels, ids, t_logits, weights = make_case(seed=7, n=6, dtype=dtype)
    logits[1] = NEG_INF
    logits[3] = float("nan")  # never read: inactive rows skip their loads
    logits[5] = NEG_INF       # scales stay non-zero
    clm_scale, fusion_scale = scales(6)
    clm_scale[[1, 3]] = 0.0
    fusion_scale[[1, 3]] = 0.0
    loss, grad = run_kernel(logits, labels, ids, t_logits, weights, clm_scale, fusion_scale)
    assert (loss[[1, 3, 5]] == 0).all() and (grad[[1, 3, 5]] == 0).all()
    keep = [0, 2, 4]
    ref_loss, ref_grad = reference(logits[keep], labels[keep], ids[keep], t_logits[keep], weights[keep],
                                   clm_scale[keep], fusion_scale[keep])
    assert_matches(loss[keep], grad[keep], ref_loss, ref_grad, dtype)


def test_row_without_any_teacher_has_no_fusion_term():
    logits, labels, ids, t_logits, weights = make_case(seed=8, n=3)
    t_logits[1] = NEG_INF
    weights[1] = 0.0
    sc = scales(3, lam=0.0)
    loss, grad = run_kernel(logits, labels, ids, t_logits, weights, *sc)
    assert loss[1] == 0 and (grad[1] == 0).all()
    assert_matches(loss, grad, *reference(logits, labels, ids, t_logits, weights, *sc), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_grad_inplace_overwrites_logits(dtype):
    inputs = make_case(seed=9, dtype=dtype)
    sc = scales(8)
    ref_loss, ref_grad = reference(*inputs, *sc)
    logits = inputs[0].clone()
    loss, grad = run_kernel(logits, *inputs[1:], *sc, grad_inplace=True)
    assert grad.data_ptr() == logits.data_ptr()
    assert_matches(loss, grad, ref_loss, ref_grad, dtype)


def test_forward_only_returns_no_grad_and_same_loss():
    inputs = make_case(seed=10)
    sc = scales(8)
    loss, grad = run_kernel(*inputs, *sc, compute_grad=False, loss_type="ce", temperature=2.0)
    assert grad is None
    ref_loss, _ = reference(*inputs, *sc, loss_type="ce", temperature=2.0)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-6)


def test_empty_batch():
    logits = torch.zeros(0, 10)
    loss, grad = run_kernel(logits, torch.zeros(0, dtype=torch.long), torch.zeros(0, 2, 3, dtype=torch.int32),
                            torch.zeros(0, 2, 3), torch.zeros(0, 2), torch.zeros(0), torch.zeros(0))
    assert loss.shape == (0,) and grad.shape == (0, 10)


def test_invalid_arguments_name_the_argument():
    logits, labels, ids, t_logits, weights = make_case(seed=11, n=4)
    sc = scales(4)
    kw = dict(temperature=1.0, loss_type="kl", ignore_index=-100, compute_grad=True, grad_inplace=False)
    bad = {
        "logits": (logits.double(), TypeError),
        "labels": (labels.int(), TypeError),
        "teacher_logits": (t_logits[:, :2], ValueError),
        "teacher_weights": (weights.t().contiguous().t(), ValueError),
        "clm_scale": (sc[0][:3], ValueError),
    }
    for name, (value, error) in bad.items():
        args = dict(logits=logits, labels=labels, teacher_ids=ids, teacher_logits=t_logits,
                    teacher_weights=weights, clm_scale=sc[0], fusion_scale=sc[1])
        args[name] = value
        with pytest.raises(error, match=name):
            fusion_loss_rows_triton(*args.values(), **kw)
    with pytest.raises(ValueError, match="logits must be contiguous"):
        fusion_loss_rows_triton(logits.t().contiguous().t(), labels, ids, t_logits, weights, *sc, **kw)
    with pytest.raises(ValueError, match="loss_type"):
        fusion_loss_rows_triton(logits, labels, ids, t_logits, weights, *sc, **{**kw, "loss_type": "js"})
    with pytest.raises(ValueError, match="temperature"):
        fusion_loss_rows_triton(logits, labels, ids, t_logits, weights, *sc, **{**kw, "temperature": 0.0})
    wide = MAX_TEACHER_ENTRIES // 2 + 1
    with pytest.raises(ValueError, match="teacher_ids"):
        fusion_loss_rows_triton(logits, labels, torch.zeros(4, 2, wide, dtype=torch.int32),
                                torch.zeros(4, 2, wide), weights[:, :2].contiguous(), *sc, **kw)


@pytest.mark.parametrize("seed", range(6))
def test_random_structures(seed):
    """Random shapes (V below/above/not a multiple of BLOCK_V, T*k from 1 to 15), id ranges small
    enough to force duplicates, random padding, ignored labels, zero scales and int64 ids."""
    gen = torch.Generator().manual_seed(100 + seed)

    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=gen))]

    n, vocab, teachers, k = pick([1, 5, 9]), pick([5, 37, 128, 300]), pick([1, 2, 3]), pick([1, 2, 5])
    dtype, loss_type, block_v = pick(list(GRAD_RTOL)), pick(["kl", "ce"]), pick([16, 64, 512])
    temperature = float(torch.empty(1).uniform_(0.5, 2.0, generator=gen))
    logits = (torch.randn(n, vocab, generator=gen) * 3).to(dtype)
    labels = torch.randint(0, vocab, (n,), generator=gen)
    labels[torch.rand(n, generator=gen) < 0.3] = -100
    id_range = pick([min(vocab, 4), vocab])
    ids = torch.randint(0, id_range, (n, teachers, k), generator=gen)
    ids = ids.to(pick([torch.int32, torch.int64]))
    t_logits = torch.randn(n, teachers, k, generator=gen) * 2
    t_logits[torch.rand(n, teachers, k, generator=gen) < 0.25] = NEG_INF
    present = torch.isfinite(t_logits).any(-1).float()
    weights = torch.rand(n, teachers, generator=gen) * present
    weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-12)
    clm_scale = torch.rand(n, generator=gen) * (torch.rand(n, generator=gen) < 0.8)
    fusion_scale = torch.rand(n, generator=gen) * (torch.rand(n, generator=gen) < 0.8)
    args = (logits, labels, ids, t_logits, weights, clm_scale, fusion_scale)
    out = run_kernel(*args, block_v=block_v, temperature=temperature, loss_type=loss_type)
    assert_matches(*out, *reference(*args, temperature=temperature, loss_type=loss_type), dtype)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_pos_inf_logits_give_nan_like_the_torch_path(bad):
    # Overflowed logits must not be hidden as an empty row (fp16 loss scaling relies on seeing them).
    from fusekernels.loss.torch_backend import fusion_loss_rows_torch

    torch.manual_seed(3)
    n, v, t, k = 3, 70, 2, 3
    logits = torch.randn(n, v)
    logits[1, 5] = bad
    labels = torch.tensor([1, 2, 3])
    ids = torch.randint(0, v, (n, t, k), dtype=torch.int32)
    tlog, w, ones = torch.randn(n, t, k), torch.full((n, t), 0.5), torch.ones(n)
    args = dict(temperature=1.0, loss_type="kl", ignore_index=-100, compute_grad=True, grad_inplace=False)
    for fn in (fusion_loss_rows_triton, fusion_loss_rows_torch):
        rows, grad = fn(logits.clone(), labels, ids, tlog, w, ones, ones, **args)
        assert torch.isnan(rows[1]), fn.__name__
        assert torch.isfinite(rows[[0, 2]]).all() and torch.isfinite(grad[[0, 2]]).all(), fn.__name__
