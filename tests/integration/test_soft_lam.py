"""The "soft" lam schedule: per-row lam = 1 - best teacher reward, in the loss and in training."""
import math

import pytest
import torch

pytest.importorskip("transformers")
from datasets import Dataset  # noqa: E402

from fusekernels.integration import FusionArguments, FusionDataCollator, FusionTrainer  # noqa: E402
from fusekernels.integration.trainer import fusion_compute_loss  # noqa: E402
from fusekernels.loss import fusion_loss  # noqa: E402
from tests.integration.helpers import synthetic_examples, tiny_llama, training_args  # noqa: E402
from tests.reference.dense_fusion import dense_fusion_rows  # noqa: E402


def _soft_lam_reference(z, y, ids, tl, ce, fusion, loss_type, swap=False):
    """Per-row loss [N] float64 of the documented soft schedule, computed independently of the
    library: rewards exp(-ce) of the present teachers; MinCE fuses the teacher of largest reward
    (first on ties), AvgCE the softmax of the rewards; each row weighs its fusion term r (the
    best reward for MinCE, the mean reward of the present teachers for AvgCE) and its CLM term
    1 - r; a row without a teacher is CLM only. ``swap``: the two weights exchanged (a plausible
    wrong schedule the test must tell apart)."""
    present = torch.isfinite(tl).any(-1)
    reward = torch.exp(-ce.double())
    n, t = present.shape
    weights = torch.zeros(n, t, dtype=torch.float64)
    r = torch.zeros(n, dtype=torch.float64)
    for row in range(n):
        here = [i for i in range(t) if present[row, i]]
        if not here:
            continue
        rewards = torch.stack([reward[row, i] for i in here])
        if fusion == "mince":
            weights[row, here[int(torch.argmax(rewards))]] = 1.0
            r[row] = rewards.max()
        else:
            weights[row, here] = torch.softmax(rewards, 0)
            r[row] = rewards.mean()
    if swap:
        r = 1.0 - r
    return dense_fusion_rows(z, y, ids, tl, weights, 1.0 - r, r, loss_type=loss_type)


@pytest.mark.parametrize("loss_type", ["kl", "ce"])
@pytest.mark.parametrize("fusion", ["mince", "avgce"])
def test_soft_lam_is_per_row_reward_weighting(fusion, loss_type):
    gen = torch.Generator().manual_seed(3)
    n, v, t, k = 6, 40, 3, 4
    z, y = torch.randn(n, v, generator=gen), torch.randint(0, v, (n,), generator=gen)
    ids = torch.randint(0, v, (n, t, k), generator=gen, dtype=torch.int32)
    tl = torch.randn(n, t, k, generator=gen)
    tl[1, 0] = float("-inf")  # teacher 0 absent at row 1: its reward does not count
    tl[4] = float("-inf")  # no teacher at row 4: CLM only
    ce = torch.rand(n, t, generator=gen) * 3
    ce[2, 0] = 0.01  # at row 2 the absent-free best teacher has a reward near 1: lam near 0
    out = fusion_loss(z, y, ids, tl, teacher_ce=ce, fusion=fusion, lam="soft", reduction="none",
                      loss_type=loss_type)
    expected = _soft_lam_reference(z, y, ids, tl, ce, fusion, loss_type)
    torch.testing.assert_close(out.double(), expected, rtol=2e-6, atol=2e-6)
    # the reference tells the schedule apart from the swapped one and from a fixed lam
    swapped = _soft_lam_reference(z, y, ids, tl, ce, fusion, loss_type, swap=True)
    assert not torch.allclose(out.double(), swapped, rtol=1e-3)
    fixed = fusion_loss(z, y, ids, tl, teacher_ce=ce, fusion=fusion, lam=0.9, reduction="none", loss_type=loss_type)
    assert not torch.allclose(fixed.double(), expected, rtol=1e-3)
    with pytest.raises(ValueError, match="soft"):
        fusion_loss(z, y, ids, tl, teacher_weights=torch.ones(n, t), fusion="weights", lam="soft")
    with pytest.raises(ValueError, match="lam"):
        fusion_loss(z, y, ids, tl, teacher_ce=ce, lam="hard")


@pytest.mark.parametrize("fused", ["always", "never"])
def test_soft_lam_trains(tmp_path, fused):
    examples = synthetic_examples(8, seed=11)
    args = FusionArguments(lam_schedule="soft", fused_lm_head=fused)
    trainer = FusionTrainer(model=tiny_llama(), args=training_args(tmp_path, max_steps=6, learning_rate=5e-3),
                            train_dataset=Dataset.from_list(examples), fusion_args=args)
    batch = FusionDataCollator()(examples[:2])
    model = trainer.model
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    teacher = {c: batch[c] for c in ("teacher_ids", "teacher_logits", "teacher_ce")}
    soft = fusion_compute_loss(out, batch["labels"], config=args, **teacher)
    hard = fusion_compute_loss(out, batch["labels"], config=FusionArguments(lam=0.9), **teacher)
    assert math.isfinite(float(soft)) and float(soft) != pytest.approx(float(hard), rel=1e-4)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0]
