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


@pytest.mark.parametrize("fusion", ["mince", "avgce"])
def test_soft_lam_is_per_row_reward_weighting(fusion):
    gen = torch.Generator().manual_seed(3)
    n, v, t, k = 6, 40, 3, 4
    z, y = torch.randn(n, v, generator=gen), torch.randint(0, v, (n,), generator=gen)
    ids = torch.randint(0, v, (n, t, k), generator=gen, dtype=torch.int32)
    tl = torch.randn(n, t, k, generator=gen)
    tl[1, 0] = float("-inf")  # teacher 0 absent at row 1: its reward does not count
    ce = torch.rand(n, t, generator=gen) * 3
    out = fusion_loss(z, y, ids, tl, teacher_ce=ce, fusion=fusion, lam="soft", reduction="none",
                      return_components=True)
    present = torch.isfinite(tl).any(-1)
    reward = torch.where(present, torch.exp(-ce), torch.zeros(()))
    r = reward.amax(-1) if fusion == "mince" else reward.sum(-1) / present.sum(-1)
    expected = (1 - r) * out.clm_loss + r * out.fusion_loss
    torch.testing.assert_close(out.loss, expected, rtol=1e-6, atol=1e-6)
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
