"""Bad input raises a clear exception that names the argument."""
import pytest
import torch

from fusekernels.loss import fusion_loss, teacher_topk
from tests.loss.api_reference import make_case


@pytest.fixture
def case():
    return make_case(seed=30)


def call(case, **changes):
    args = dict(logits=case["logits"], labels=case["labels"], teacher_ids=case["teacher_ids"],
                teacher_logits=case["teacher_logits"], teacher_ce=case["teacher_ce"])
    args.update(changes)
    return fusion_loss(args.pop("logits"), args.pop("labels"), args.pop("teacher_ids"),
                       args.pop("teacher_logits"), **args)


def with_nan(t):
    t = t.clone()
    t.view(-1)[0] = float("nan")
    return t


@pytest.mark.parametrize("change,exc,pattern", [
    (lambda c: dict(logits=c["logits"].long()), TypeError, "logits must be"),
    (lambda c: dict(labels=c["labels"].float()), TypeError, "labels must be an integer"),
    (lambda c: dict(labels=c["labels"][:, :-1]), ValueError, "labels must have shape"),
    (lambda c: dict(labels=c["labels"].clone().fill_(37)), ValueError, "labels out of range"),
    (lambda c: dict(teacher_ids=c["teacher_ids"].float()), TypeError, "teacher_ids must be an integer"),
    (lambda c: dict(teacher_ids=c["teacher_ids"][:, :-1]), ValueError, "teacher_ids must have shape"),
    (lambda c: dict(teacher_ids=c["teacher_ids"][..., :0], teacher_logits=c["teacher_logits"][..., :0]),
     ValueError, "k > 0"),
    (lambda c: dict(teacher_ids=c["teacher_ids"].clone().fill_(37)), ValueError, "teacher_ids out of range"),
    (lambda c: dict(teacher_ids=c["teacher_ids"].clone().fill_(-1)), ValueError, "teacher_ids out of range"),
    (lambda c: dict(teacher_logits=c["teacher_logits"][..., :-1]), ValueError, "teacher_logits must have shape"),
    (lambda c: dict(teacher_logits=with_nan(c["teacher_logits"])), ValueError, "teacher_logits contains NaN"),
    (lambda c: dict(teacher_logits=c["teacher_logits"].clone().fill_(float("inf"))), ValueError, r"\+inf"),
    (lambda c: dict(teacher_counts=c["teacher_counts"] + 5), ValueError, "teacher_counts must be in"),
    (lambda c: dict(teacher_counts=c["teacher_counts"][..., :1, :]), ValueError, "teacher_counts must have shape"),
    (lambda c: dict(teacher_ce=with_nan(c["teacher_ce"])), ValueError, "teacher_ce contains NaN"),
    (lambda c: dict(teacher_ce=c["teacher_ce"][..., :2]), ValueError, "teacher_ce must have shape"),
    (lambda c: dict(teacher_ce=-c["teacher_ce"] / 0), ValueError, "teacher_ce contains -inf"),
    (lambda c: dict(teacher_ce=c["teacher_ce"].long()), TypeError, "teacher_ce must be a floating"),
    (lambda c: dict(teacher_ce=None), ValueError, "needs teacher_ce"),
    (lambda c: dict(fusion="weights"), ValueError, "needs teacher_weights"),
    (lambda c: dict(fusion="weights", teacher_weights=with_nan(c["teacher_weights"])), ValueError,
     "teacher_weights contains NaN"),
    (lambda c: dict(fusion="weights", teacher_weights=-c["teacher_weights"]), ValueError, "teacher_weights must be"),
    (lambda c: dict(fusion="best"), ValueError, "fusion must be one of"),
    (lambda c: dict(loss_type="mse"), ValueError, "loss_type must be one of"),
    (lambda c: dict(reduction="avg"), ValueError, "reduction must be one of"),
    (lambda c: dict(backend="cuda"), ValueError, "backend must be one of"),
    (lambda c: dict(temperature=0.0), ValueError, "temperature must be"),
    (lambda c: dict(lam=1.5), ValueError, "lam must be"),
    (lambda c: dict(labels=None), ValueError, "labels is None, so lam must be 0"),
    (lambda c: dict(fusion_mask=torch.ones(3, dtype=torch.bool)), ValueError, "fusion_mask must have shape"),
    (lambda c: dict(fusion_mask=torch.ones(c["labels"].shape)), TypeError, "fusion_mask must be a bool"),
    (lambda c: dict(num_items_in_batch=-1), ValueError, "num_items_in_batch must be a finite count"),
    (lambda c: dict(num_items_in_batch="4"), TypeError, "num_items_in_batch must be an int"),
    (lambda c: dict(num_fusion_items=torch.ones(2), fusion_mask=c["labels"] >= 0), ValueError,
     "num_fusion_items must be an int or a one-element"),
    (lambda c: dict(teacher_ids=c["teacher_ids"].to("meta")), ValueError, "teacher_ids is on meta"),
])
def test_bad_input(case, change, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call(case, **change(case))


def test_triton_backend_on_cpu_without_interpreter(case, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="backend='triton' needs CUDA tensors"):
        call(case, backend="triton")


def test_float64_logits_need_torch_backend(case, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    pytest.importorskip("triton")
    with pytest.raises(ValueError, match="float64 are only supported by backend='torch'"):
        call(case, logits=case["logits"].double(), backend="triton")


@pytest.mark.parametrize("kwargs,exc,pattern", [
    (dict(k=0), ValueError, "k must be an int in"),
    (dict(k=1000), ValueError, "k must be an int in"),
    (dict(k=2.5), ValueError, "k must be an int in"),
    (dict(labels=torch.zeros(3, dtype=torch.long)), ValueError, "labels must have shape"),
    (dict(labels=torch.full((4, 5), 99)), ValueError, "labels out of range"),
    (dict(labels=torch.zeros(4, 5)), TypeError, "labels must be an integer"),
    (dict(backend="gpu"), ValueError, "backend must be one of"),
])
def test_teacher_topk_bad_input(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        teacher_topk(torch.randn(4, 5, 20), **kwargs)


def test_teacher_topk_bad_logits():
    with pytest.raises(TypeError, match="logits must be"):
        teacher_topk(torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="V > 0"):
        teacher_topk(torch.zeros(3, 0))


@pytest.mark.parametrize("count", [0, float("nan"), -2, torch.tensor(0), torch.tensor(float("inf"))])
def test_bad_item_counts_are_rejected(case, count):
    with pytest.raises(ValueError, match="num_items_in_batch must be a finite count"):
        call(case, num_items_in_batch=count)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_batch_gives_zero_loss(reduction):
    v, t, k = 30, 2, 3
    logits = torch.randn(0, v, requires_grad=True)
    loss = fusion_loss(logits, torch.zeros(0, dtype=torch.long), torch.zeros(0, t, k, dtype=torch.int32),
                       torch.zeros(0, t, k), teacher_ce=torch.zeros(0, t), reduction=reduction)
    assert loss.shape == (() if reduction != "none" else (0,))
    loss.sum().backward()
    assert logits.grad.shape == (0, v)
