"""Registries of the loss: a toy fusion rule registered once reaches the loss, FusionArguments
and the command line."""
import pytest
import torch

from fusekernels.loss import fusion_loss
from fusekernels.loss.registry import BACKENDS, FUSION_RULES, LOSS_TYPES, PRECISIONS, FusionRule
from fusekernels.registry import Registry


def _uniform(present, teacher_ce, teacher_weights, dtype):
    w = present.to(dtype)
    return w / w.sum(-1, keepdim=True).clamp_min(1)


@pytest.fixture
def uniform_rule():
    rule = FUSION_RULES.register(FusionRule("toy_uniform", _uniform, needs=(), help="equal weights"))
    yield rule
    FUSION_RULES.unregister("toy_uniform")


def _inputs(seed=0, n=12, v=40, t=3, k=4):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, v, generator=g, dtype=torch.float64)
    labels = torch.randint(0, v, (n,), generator=g)
    ids = torch.stack([torch.randperm(v, generator=g)[:k] for _ in range(n * t)]).reshape(n, t, k).int()
    tl = torch.randn(n, t, k, generator=g, dtype=torch.float64)
    tl[0, 1] = float("-inf")  # teacher 1 absent on row 0
    return logits, labels, ids, tl


def test_registered_rule_reaches_the_loss(uniform_rule):
    logits, labels, ids, tl = _inputs()
    ours = fusion_loss(logits.clone().requires_grad_(), labels, ids, tl, fusion="toy_uniform", backend="torch")
    # the same weights given explicitly through the built-in "weights" rule
    ref = fusion_loss(logits.clone().requires_grad_(), labels, ids, tl, fusion="weights",
                      teacher_weights=torch.ones(12, 3), backend="torch")
    assert torch.allclose(ours, ref, rtol=0, atol=1e-12)
    mince = fusion_loss(logits, labels, ids, tl, fusion="mince", teacher_ce=torch.rand(12, 3), backend="torch")
    assert not torch.allclose(ours, mince)  # the rule is really used


def test_registered_rule_reaches_arguments_and_cli(uniform_rule):
    pytest.importorskip("transformers")
    from fusekernels.cli import build_parser
    from fusekernels.integration import FusionArguments

    assert FusionArguments(fusion="toy_uniform").fusion == "toy_uniform"
    args = build_parser().parse_args(["demo", "--fusion", "toy_uniform"])
    assert args.fusion == "toy_uniform"


def test_unknown_names_list_the_choices():
    with pytest.raises(ValueError, match=r"fusion must be one of \('mince', 'avgce', 'weights'"):
        fusion_loss(torch.randn(2, 5), torch.tensor([0, 1]), torch.zeros(2, 1, 1, dtype=torch.int32),
                    torch.zeros(2, 1, 1), fusion="nope")
    for registry, name in ((LOSS_TYPES, "loss_type"), (BACKENDS, "backend"), (PRECISIONS, "precision")):
        with pytest.raises(ValueError, match=f"{name} must be one of"):
            registry.check("nope")


def test_registry_refuses_duplicates_and_bad_names():
    reg = Registry("thing")
    reg.register("a description", "a")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("another", "a")
    with pytest.raises(ValueError, match="non-empty str name"):
        reg.register("x", "")
    assert reg.names() == ("a",) and reg.help() == "a"


def test_weights_rule_is_refused_for_training():
    pytest.importorskip("transformers")
    from fusekernels.integration import FusionArguments

    with pytest.raises(ValueError, match="teacher_weights"):
        FusionArguments(fusion="weights")
