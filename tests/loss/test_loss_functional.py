"""fusion_loss (public API) vs the float64 loop-based reference: values, gradients, options."""
import pytest
import torch

from fusekernels.loss import FusionLoss, FusionLossOutput, fusion_loss
from tests.loss.api_reference import make_case, reference_fusion_loss

TENSORS = ("teacher_ce", "teacher_weights")


def run_both(case, dtype_tol=1e-5, grad_tol=1e-6, use_counts=False, **options):
    """Run fusion_loss (torch backend) and the reference; compare loss, components and grads."""
    logits = case["logits"]
    extra = {name: case[name] for name in TENSORS}
    if use_counts:
        teacher = dict(teacher_logits=case["raw_teacher_logits"], teacher_counts=case["teacher_counts"])
    else:
        teacher = dict(teacher_logits=case["teacher_logits"])
    ours_in = logits.detach().clone().requires_grad_(True)
    out = fusion_loss(ours_in, case["labels"], case["teacher_ids"], **teacher, **extra,
                      backend="torch", return_components=True, **options)
    ref_in = logits.detach().double().requires_grad_(True)
    ref, ref_clm, ref_fus = reference_fusion_loss(ref_in, case["labels"], case["teacher_ids"],
                                                  case["teacher_logits"], **extra, **options)
    torch.testing.assert_close(out.loss.double(), ref.detach(), rtol=dtype_tol, atol=dtype_tol)
    torch.testing.assert_close(out.clm_loss.double(), ref_clm, rtol=dtype_tol, atol=dtype_tol)
    torch.testing.assert_close(out.fusion_loss.double(), ref_fus, rtol=dtype_tol, atol=dtype_tol)
    weight = torch.linspace(0.5, 2.0, out.loss.numel()).reshape(out.loss.shape)
    (out.loss * weight).sum().backward()
    (ref * weight.double()).sum().backward()
    assert ours_in.grad.dtype == logits.dtype
    torch.testing.assert_close(ours_in.grad.double(), ref_in.grad, rtol=0, atol=grad_tol)
    return out


@pytest.mark.parametrize("fusion", ["mince", "avgce", "weights"])
@pytest.mark.parametrize("loss_type", ["kl", "ce"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_options_match_reference(fusion, loss_type, reduction):
    case = make_case(seed=hash((fusion, loss_type, reduction)) % 1000)
    run_both(case, fusion=fusion, loss_type=loss_type, reduction=reduction, lam=0.3, temperature=0.7)


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
def test_lam_endpoints(lam):
    out = run_both(make_case(seed=11), lam=lam, fusion="avgce")
    torch.testing.assert_close(out.loss, lam * out.clm_loss + (1 - lam) * out.fusion_loss)


@pytest.mark.parametrize("dtype,tol,grad_tol", [(torch.bfloat16, 1e-5, 1e-2), (torch.float16, 1e-5, 2e-3)])
def test_low_precision_logits(dtype, tol, grad_tol):
    # Loss vs the reference on the same (rounded) logits: the loss is accumulated in fp32.
    run_both(make_case(seed=12, logits_dtype=dtype), dtype_tol=tol, grad_tol=grad_tol, lam=0.5)


def test_counts_equal_minus_inf_padding():
    case = make_case(seed=13)
    for reduction in ("mean", "none"):
        a = fusion_loss(case["logits"], case["labels"], case["teacher_ids"], case["teacher_logits"],
                        teacher_ce=case["teacher_ce"], reduction=reduction)
        b = fusion_loss(case["logits"], case["labels"], case["teacher_ids"], case["raw_teacher_logits"],
                        teacher_counts=case["teacher_counts"], teacher_ce=case["teacher_ce"], reduction=reduction)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    run_both(case, use_counts=True)


def test_fusion_mask_and_denominators():
    case = make_case(seed=14)
    mask = torch.rand(case["labels"].shape, generator=torch.Generator().manual_seed(0)) < 0.7
    run_both(case, fusion_mask=mask.long())
    run_both(case, fusion_mask=mask, num_items_in_batch=17, num_fusion_items=torch.tensor(23))
    run_both(case, num_items_in_batch=torch.tensor(9))


def test_gradient_accumulation_over_micro_batches():
    """Two micro-batches with the global item counts sum to the full batch (loss and grads)."""
    case = make_case(seed=15, lead=(4, 5))
    full_in = case["logits"].clone().requires_grad_(True)
    kwargs = dict(teacher_ce=case["teacher_ce"], fusion="avgce")
    fusion_loss(full_in, case["labels"], case["teacher_ids"], case["teacher_logits"], **kwargs).backward()
    items = int((case["labels"] != -100).sum())
    total, grads = 0.0, []
    for half in (slice(0, 2), slice(2, 4)):
        part = case["logits"][half].clone().requires_grad_(True)
        loss = fusion_loss(part, case["labels"][half], case["teacher_ids"][half], case["teacher_logits"][half],
                           teacher_ce=case["teacher_ce"][half], fusion="avgce", num_items_in_batch=items)
        loss.backward()
        total += loss.item()
        grads.append(part.grad)
    full = fusion_loss(case["logits"], case["labels"], case["teacher_ids"], case["teacher_logits"], **kwargs)
    assert abs(total - full.item()) < 1e-5
    torch.testing.assert_close(torch.cat(grads), full_in.grad, rtol=1e-5, atol=1e-7)


def test_per_sequence_ce_broadcasts():
    case = make_case(seed=16, lead=(3, 4))
    per_sequence = case["teacher_ce"][:, :1]                      # [B, 1, T]
    a = fusion_loss(case["logits"], case["labels"], case["teacher_ids"], case["teacher_logits"],
                    teacher_ce=per_sequence)
    b = fusion_loss(case["logits"], case["labels"], case["teacher_ids"], case["teacher_logits"],
                    teacher_ce=per_sequence.expand_as(case["teacher_ce"]).contiguous())
    assert a.item() == b.item()


def test_mince_ties_go_to_first_present_teacher():
    vocab = 8
    logits = torch.randn(1, vocab)
    ids = torch.tensor([[[1, 2], [3, 4], [5, 6]]])
    t_logits = torch.tensor([[[0.0, 1.0], [2.0, 0.5], [1.0, 1.0]]])
    ce = torch.tensor([[0.7, 0.7, 0.7]])
    def only(t):
        return fusion_loss(logits, None, ids[:, t:t + 1], t_logits[:, t:t + 1], teacher_ce=ce[:, :1], lam=0.0)
    tied = fusion_loss(logits, None, ids, t_logits, teacher_ce=ce, lam=0.0)
    assert tied.item() == only(0).item()
    absent_first = t_logits.clone()
    absent_first[0, 0] = float("-inf")
    assert fusion_loss(logits, None, ids, absent_first, teacher_ce=ce, lam=0.0).item() == only(1).item()


def test_all_ignored_rows_and_no_teacher_give_zero():
    case = make_case(seed=17)
    labels = torch.full_like(case["labels"], -100)
    logits = case["logits"].clone().requires_grad_(True)
    loss = fusion_loss(logits, labels, case["teacher_ids"], case["teacher_logits"], teacher_ce=case["teacher_ce"])
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(logits.grad) == 0
    logits.grad = None
    absent = torch.full_like(case["teacher_logits"], float("-inf"))
    loss = fusion_loss(logits, case["labels"], case["teacher_ids"], absent, teacher_ce=case["teacher_ce"], lam=0.0)
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(logits.grad) == 0


def test_minus_inf_student_logits_are_finite():
    case = make_case(seed=18)
    logits = case["logits"].clone()
    logits[..., :3] = float("-inf")
    labels = case["labels"].clone()
    labels[(labels >= 0) & (labels < 3)] = 5
    ids = case["teacher_ids"].clone()
    ids[ids < 3] = 4
    case.update(logits=logits, labels=labels, teacher_ids=ids)
    out = run_both(case)
    assert torch.isfinite(out.loss)


def test_inplace_backward_matches_and_overwrites():
    case = make_case(seed=19)
    plain = case["logits"].clone().requires_grad_(True)
    fusion_loss(plain, case["labels"], case["teacher_ids"], case["teacher_logits"],
                teacher_ce=case["teacher_ce"]).backward()
    leaf = case["logits"].clone().requires_grad_(True)
    hidden = leaf * 1.0                               # a non-leaf whose storage receives the gradient
    loss = fusion_loss(hidden, case["labels"], case["teacher_ids"], case["teacher_logits"],
                       teacher_ce=case["teacher_ce"], inplace_backward=True)
    (loss * 2).backward()
    torch.testing.assert_close(leaf.grad, 2 * plain.grad, rtol=1e-6, atol=1e-8)
    assert not torch.equal(hidden.detach(), case["logits"])


def test_no_grad_and_frozen_logits():
    case = make_case(seed=20)
    args = (case["labels"], case["teacher_ids"], case["teacher_logits"])
    logits = case["logits"].clone().requires_grad_(True)
    with torch.no_grad():
        a = fusion_loss(logits, *args, teacher_ce=case["teacher_ce"], inplace_backward=True)
    assert not a.requires_grad and torch.equal(logits.detach(), case["logits"])
    b = fusion_loss(case["logits"], *args, teacher_ce=case["teacher_ce"])
    assert not b.requires_grad and a.item() == b.item()


def test_backward_twice():
    case = make_case(seed=21)
    args = (case["labels"], case["teacher_ids"], case["teacher_logits"])
    logits = case["logits"].clone().requires_grad_(True)
    loss = fusion_loss(logits, *args, teacher_ce=case["teacher_ce"])
    (loss * 3).backward(retain_graph=True)
    first = logits.grad.clone()
    (loss * 3).backward()                             # the default buffer is never modified
    torch.testing.assert_close(logits.grad, 2 * first)
    hidden = case["logits"].clone().requires_grad_(True) * 1.0
    loss = fusion_loss(hidden, *args, teacher_ce=case["teacher_ce"], inplace_backward=True)
    (loss * 3).backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace_backward=True allows one backward"):
        (loss * 3).backward()


def test_gradcheck_float64():
    case = make_case(seed=22, lead=(5,), vocab=7, n_teachers=2, k=3)
    logits = case["logits"].double().requires_grad_(True)
    for reduction in ("mean", "none"):
        def fn(z):
            return fusion_loss(z, case["labels"], case["teacher_ids"], case["teacher_logits"],
                               teacher_ce=case["teacher_ce"], fusion="avgce", temperature=0.8,
                               reduction=reduction, backend="torch")
        assert torch.autograd.gradcheck(fn, (logits,), eps=1e-6, atol=1e-7)


def test_module_equals_functional():
    case = make_case(seed=23)
    module = FusionLoss(fusion="weights", loss_type="ce", lam=0.4, temperature=2.0, return_components=True)
    out = module(case["logits"], case["labels"], case["teacher_ids"], case["teacher_logits"],
                 teacher_weights=case["teacher_weights"])
    assert isinstance(out, FusionLossOutput)
    ref = fusion_loss(case["logits"], case["labels"], case["teacher_ids"], case["teacher_logits"],
                      teacher_weights=case["teacher_weights"], fusion="weights", loss_type="ce",
                      lam=0.4, temperature=2.0)
    assert out.loss.item() == ref.item()
    assert "fusion='weights'" in repr(module)


def test_id_and_logit_dtypes_are_equivalent():
    case = make_case(seed=24)
    base = fusion_loss(case["logits"], case["labels"], case["teacher_ids"], case["teacher_logits"],
                       teacher_ce=case["teacher_ce"])
    other = fusion_loss(case["logits"], case["labels"].int(), case["teacher_ids"].int(),
                        case["teacher_logits"].half().float(), teacher_ce=case["teacher_ce"])
    half = fusion_loss(case["logits"], case["labels"], case["teacher_ids"], case["teacher_logits"].half(),
                       teacher_ce=case["teacher_ce"])
    assert base.item() == pytest.approx(other.item(), rel=1e-3)
    assert half.item() == other.item()
