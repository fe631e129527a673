"""FusionLossFunction: the fusion loss in a PLAIN transformers.Trainer (compute_loss_func), checked
against FusionTrainer's full-logits path: same loss and gradients, exact gradient accumulation,
the lam schedule, wrappers (DDP) and clear errors."""
import math

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("datasets")
from datasets import Dataset  # noqa: E402
from transformers import Trainer  # noqa: E402

from fusekernels.integration import (  # noqa: E402
    FusionArguments,
    FusionDataCollator,
    FusionLossFunction,
    FusionTrainer,
    fusion_compute_loss,
)
from tests.integration.ddp_worker import DDP_LENGTHS  # noqa: E402
from tests.integration.helpers import VOCAB, GradCapture, synthetic_examples, tiny_llama, training_args  # noqa: E402
from tests.integration.test_trainer import _launch_ddp, assert_same_grads  # noqa: E402


def _train(trainer):
    capture = GradCapture()
    trainer.add_callback(capture)
    trainer.train()
    return capture.grads, [h["loss"] for h in trainer.state.log_history if "loss" in h]


def plain_run(out_dir, examples, fusion_args=None, callbacks=True, **overrides):
    model = tiny_llama(seed=1)
    loss_fn = FusionLossFunction(model, fusion_args)
    trainer = Trainer(model=model, args=training_args(out_dir, **overrides), train_dataset=Dataset.from_list(examples),
                      data_collator=FusionDataCollator(pad_token_id=0, vocab_size=VOCAB), compute_loss_func=loss_fn,
                      callbacks=[loss_fn] if callbacks else None)
    return _train(trainer)


def fusion_trainer_run(out_dir, examples, fusion_args=None, **overrides):
    trainer = FusionTrainer(model=tiny_llama(seed=1), args=training_args(out_dir, **overrides),
                            train_dataset=Dataset.from_list(examples),
                            fusion_args=fusion_args or FusionArguments(fused_lm_head="never"))
    return _train(trainer)


@pytest.mark.parametrize("batch, accumulation", [(4, 1), (2, 2), (1, 4)])
def test_plain_trainer_matches_fusion_trainer(tmp_path, batch, accumulation):
    """One step over 4 sequences of different lengths: the plain Trainer (any micro-batching) gives
    FusionTrainer's full-batch loss and gradients."""
    examples = synthetic_examples(4, exact_lengths=DDP_LENGTHS, seed=3)
    args = FusionArguments(fusion="avgce", lam=0.7)
    reference_grads, reference_loss = fusion_trainer_run(
        tmp_path / "ref", examples, FusionArguments(fusion="avgce", lam=0.7, fused_lm_head="never"))
    grads, loss = plain_run(tmp_path / "plain", examples, args, per_device_train_batch_size=batch,
                            gradient_accumulation_steps=accumulation)
    assert loss == pytest.approx(reference_loss, rel=1e-5) and math.isfinite(loss[0])
    assert_same_grads(grads, reference_grads)


def test_lam_schedule_follows_the_training_step(tmp_path):
    examples = synthetic_examples(12, seed=7)
    decay = FusionArguments(lam=0.6, lam_schedule="hard_and_decay")
    overrides = dict(max_steps=3, lr_scheduler_type="constant")
    _, reference = fusion_trainer_run(tmp_path / "ref", examples,
                                      FusionArguments(lam=0.6, lam_schedule="hard_and_decay", fused_lm_head="never"),
                                      **overrides)
    _, losses = plain_run(tmp_path / "plain", examples, decay, **overrides)
    assert len(losses) == 3 and losses == pytest.approx(reference, rel=1e-4)
    _, constant = plain_run(tmp_path / "hard", examples, FusionArguments(lam=0.6), **overrides)
    assert constant[0] == pytest.approx(losses[0], rel=1e-5) and constant[2] != pytest.approx(losses[2], rel=1e-3)
    with pytest.raises(ValueError, match=r"callbacks=\[loss_fn\]"):
        plain_run(tmp_path / "nocb", examples, decay, callbacks=False, **overrides)


@pytest.mark.parametrize("callbacks", [True, False])
def test_dropped_teacher_columns_give_a_clear_error(tmp_path, callbacks):
    """With remove_unused_columns=True the Trainer drops the teacher columns before collation."""
    examples = synthetic_examples(4, seed=2)
    # on_train_begin (callback) or the collator, which then sees examples without teacher columns
    with pytest.raises(ValueError if callbacks else KeyError, match=r"remove_unused_columns=False"):
        plain_run(tmp_path, examples, callbacks=callbacks, remove_unused_columns=True)


def test_bad_arguments():
    model = tiny_llama()
    with pytest.raises(ValueError, match="fusion_positions='labels' only"):
        FusionLossFunction(model, FusionArguments(fusion_positions="attention"))
    with pytest.raises(TypeError, match="fusion_args must be a FusionArguments"):
        FusionLossFunction(model, {"lam": 0.5})
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        FusionLossFunction("model")


def test_hook_on_the_module_under_a_ddp_wrapper(tmp_path):
    """Built from a DDP-wrapped model, the hook sits on the inner module: the teacher columns
    never reach its forward, and a model call without them is never paired with old targets."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    batch = FusionDataCollator()(synthetic_examples(3, seed=5))
    model = tiny_llama(seed=2)
    seen = []
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapped = DistributedDataParallel(model)
        loss_fn = FusionLossFunction(wrapped)
        assert loss_fn.module is model
        # runs after the loss function's hook: records what the model's forward receives
        model.register_forward_pre_hook(lambda _m, _a, kwargs: seen.append(sorted(kwargs)), with_kwargs=True)
        inputs = dict(batch)
        labels = inputs.pop("labels")
        loss = loss_fn(wrapped(**inputs), labels, num_items_in_batch=None)
        loss.backward()
        assert not any(name in seen[-1] for name in ("teacher_ids", "teacher_logits", "teacher_ce"))
        assert "attention_mask" in seen[-1]
        with torch.no_grad():
            outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            direct = fusion_compute_loss(outputs, labels, None, teacher_ids=batch["teacher_ids"],
                                         teacher_logits=batch["teacher_logits"], teacher_ce=batch["teacher_ce"])
        assert float(loss.detach()) == pytest.approx(float(direct), rel=1e-6)
        assert all(p.grad is not None for p in model.parameters())
        with pytest.raises(ValueError, match="did not reach the model"):
            loss_fn(outputs, labels)  # the call above had no teacher columns
        loss_fn.remove()
        wrapped(**inputs)  # without the hook, the model itself receives (and ignores) the columns
        assert "teacher_ids" in seen[-1]
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_plain_trainer_two_processes_match_one_process(tmp_path):
    """accelerate launch, 2 CPU processes (gloo), plain Trainer + FusionLossFunction == FusionTrainer
    on 1 process with all 4 examples."""
    reference, _ = fusion_trainer_run(tmp_path / "single", synthetic_examples(4, exact_lengths=DDP_LENGTHS, seed=3))
    assert_same_grads(_launch_ddp(tmp_path / "ddp.pt", "labels", "never", "plain"), reference)
