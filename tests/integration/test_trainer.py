"""FusionTrainer with a tiny Llama on CPU: real training, exact gradient accumulation, fused vs
unfused LM head, packing, multi-process (gloo) equivalence and early input validation."""
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("datasets")
from datasets import Dataset  # noqa: E402

from fusekernels.integration import (  # noqa: E402
    FusionArguments,
    FusionDataCollator,
    FusionTrainer,
    fused_head_supported,
    fusion_compute_loss,
    lam_at_step,
)
from tests.integration.ddp_worker import DDP_LENGTHS, run_step  # noqa: E402
from tests.integration.helpers import GradCapture, synthetic_examples, tiny_llama, training_args  # noqa: E402
from tests.reference.dense_fusion import dense_fusion_rows  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def assert_same_grads(a, b, rtol=1e-5, atol=1e-7):
    assert a is not None and b is not None and a.keys() == b.keys()
    for name in a:
        scale = float(b[name].abs().max())
        assert torch.allclose(a[name], b[name], rtol=rtol, atol=atol * max(scale, 1.0)), \
            f"{name}: max diff {float((a[name] - b[name]).abs().max()):.3g} (max |g| {scale:.3g})"


def one_step_grads(tmp_path, examples, *, collator=None, fusion_args=None, **arg_overrides):
    trainer = FusionTrainer(model=tiny_llama(seed=1), args=training_args(tmp_path, **arg_overrides),
                            train_dataset=Dataset.from_list(examples), data_collator=collator,
                            fusion_args=fusion_args or FusionArguments())
    capture = GradCapture()
    trainer.add_callback(capture)
    trainer.train()
    return capture.grads


def test_training_reduces_the_loss_and_logs_components(tmp_path):
    examples = synthetic_examples(32, seed=0)
    trainer = FusionTrainer(
        model=tiny_llama(), train_dataset=Dataset.from_list(examples),
        args=training_args(tmp_path, max_steps=24, logging_steps=4, learning_rate=1e-2, lr_scheduler_type="constant"),
        fusion_args=FusionArguments(num_teachers=2, lam=0.7))
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 6
    for h in logs:
        assert all(math.isfinite(h[key]) for key in ("loss", "clm_loss", "fusion_loss"))
        assert h["lam"] == 0.7
        assert h["loss"] == pytest.approx(0.7 * h["clm_loss"] + 0.3 * h["fusion_loss"], rel=1e-4)
    assert logs[-1]["loss"] < logs[0]["loss"] - 0.5, [h["loss"] for h in logs]
    assert logs[-1]["fusion_loss"] < logs[0]["fusion_loss"]


@pytest.mark.parametrize("positions", ["labels", "attention"])
def test_loss_matches_float64_reference(tmp_path, positions):
    """Row t of the logits is scored against labels[t + 1] and the teachers' top-k at t; the
    fusion term covers the label rows, or every attended row as published."""
    examples = synthetic_examples(3, exact_lengths=(5, 8, 3), seed=2)
    batch = FusionDataCollator()(examples)
    model = tiny_llama(seed=4)
    trainer = FusionTrainer(model=model, args=training_args(tmp_path),
                            fusion_args=FusionArguments(fusion="avgce", fusion_positions=positions))
    loss = trainer.compute_loss(model, dict(batch)).detach()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    n_rows = logits.shape[0] * logits.shape[1]
    labels = torch.cat([batch["labels"][:, 1:], torch.full((3, 1), -100)], 1).reshape(-1)
    valid = labels != -100
    assert int(valid.sum()) == 4 + 7 + 2
    fusion_rows = valid if positions == "labels" else batch["attention_mask"].reshape(-1).bool()
    present = torch.isfinite(batch["teacher_logits"]).any(-1).reshape(n_rows, 2)
    reward = torch.exp(-batch["teacher_ce"].double().reshape(n_rows, 2))
    weights = torch.softmax(reward.masked_fill(~present, float("-inf")), -1).nan_to_num(0.0)
    rows = dense_fusion_rows(logits.reshape(n_rows, -1), labels, batch["teacher_ids"].reshape(n_rows, 2, -1),
                             batch["teacher_logits"].reshape(n_rows, 2, -1), weights,
                             0.9 * valid / valid.sum(), 0.1 * fusion_rows / fusion_rows.sum())
    assert float(loss) == pytest.approx(float(rows.sum()), rel=1e-5)


@pytest.mark.parametrize("positions", ["labels", "attention"])
@pytest.mark.parametrize("fused", ["never", "always"])
def test_gradient_accumulation_is_exact(tmp_path, positions, fused):
    """2 micro-batches x GA 2 (each padded to its own length) == one batch of 4."""
    examples = synthetic_examples(4, exact_lengths=DDP_LENGTHS, seed=3)
    fusion_args = FusionArguments(fusion_positions=positions, fused_lm_head=fused)
    reference = one_step_grads(tmp_path / "ref", examples, fusion_args=FusionArguments(fusion_positions=positions,
                                                                                       fused_lm_head="never"))
    accumulated = one_step_grads(tmp_path / "ga", examples, fusion_args=fusion_args,
                                 per_device_train_batch_size=2, gradient_accumulation_steps=2)
    assert_same_grads(accumulated, reference)


@pytest.mark.parametrize("positions", ["labels", "attention"])
def test_packing_gives_the_padded_gradients(tmp_path, positions):
    examples = synthetic_examples(4, exact_lengths=DDP_LENGTHS, seed=3)
    fusion_args = FusionArguments(fusion_positions=positions)
    padded = one_step_grads(tmp_path / "pad", examples, fusion_args=fusion_args)
    packed = one_step_grads(tmp_path / "pack", examples, fusion_args=fusion_args,
                            collator=FusionDataCollator(packing=True))
    assert_same_grads(packed, padded, rtol=1e-4, atol=1e-6)


def test_fused_head_path_never_builds_logits(tmp_path, monkeypatch):
    model = tiny_llama()
    assert fused_head_supported(model) == (True, "")
    shapes = []
    model.lm_head.register_forward_hook(lambda _m, _a, out: shapes.append(tuple(out.shape)))
    examples = synthetic_examples(4, seed=5)
    trainer = FusionTrainer(model=model, args=training_args(tmp_path), train_dataset=Dataset.from_list(examples))
    trainer.train()
    assert shapes and all(shape[1] == 0 for shape in shapes), shapes  # lm_head only saw 0 positions


def test_remove_unused_columns_keeps_teacher_columns(tmp_path):
    examples = synthetic_examples(4, seed=6)
    for e in examples:
        e["text"] = "unused"
    trainer = FusionTrainer(model=tiny_llama(), args=training_args(tmp_path, remove_unused_columns=True),
                            train_dataset=Dataset.from_list(examples))
    trainer.train()
    assert math.isfinite(trainer.state.log_history[0]["loss"])
    assert math.isfinite(trainer.evaluate(Dataset.from_list(examples))["eval_loss"])


def test_lam_schedule_hard_and_decay(tmp_path):
    assert lam_at_step("hard", 0.9, 5, 10) == 0.9
    assert [lam_at_step("hard_and_decay", 0.6, s, 4) for s in range(5)] == pytest.approx([0.6, 0.7, 0.8, 0.9, 1.0])
    with pytest.raises(ValueError, match="lam_schedule"):
        lam_at_step("bogus", 0.9, 0, 1)
    trainer = FusionTrainer(model=tiny_llama(), args=training_args(tmp_path, max_steps=4),
                            train_dataset=Dataset.from_list(synthetic_examples(8, seed=7)),
                            fusion_args=FusionArguments(lam=0.6, lam_schedule="hard_and_decay"))
    trainer.train()
    lams = [h["lam"] for h in trainer.state.log_history if "lam" in h]
    assert lams == pytest.approx([0.6, 0.7, 0.8, 0.9])


def test_fusion_compute_loss_matches_trainer(tmp_path):
    examples = synthetic_examples(2, seed=8)
    batch = FusionDataCollator()(examples)
    model = tiny_llama()
    trainer = FusionTrainer(model=model, args=training_args(tmp_path))
    outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    direct = fusion_compute_loss(outputs, batch["labels"], None, teacher_ids=batch["teacher_ids"],
                                 teacher_logits=batch["teacher_logits"], teacher_ce=batch["teacher_ce"])
    via_trainer = trainer.compute_loss(model, dict(batch)).detach()
    assert float(direct.detach()) == pytest.approx(float(via_trainer), rel=1e-5)
    with pytest.raises(ValueError, match="no 'logits'"):
        fusion_compute_loss({}, batch["labels"], teacher_ids=batch["teacher_ids"],
                            teacher_logits=batch["teacher_logits"])


def test_bad_input_fails_before_training(tmp_path):
    model, args = tiny_llama(), training_args(tmp_path)
    examples = synthetic_examples(4, seed=9)
    no_ce = [{k: v for k, v in e.items() if k != "teacher_ce"} for e in examples]
    with pytest.raises(ValueError, match=r"train_dataset is missing column\(s\) \['teacher_ce'\]"):
        FusionTrainer(model=model, args=args, train_dataset=Dataset.from_list(no_ce))
    nan_ce = [dict(e) for e in examples]
    nan_ce[1]["teacher_ce"] = nan_ce[1]["teacher_ce"] * float("nan")
    with pytest.raises(ValueError, match="train_dataset: example 1: teacher_ce contains NaN"):
        FusionTrainer(model=model, args=args, train_dataset=Dataset.from_list(nan_ce))
    with pytest.raises(ValueError, match="expected 3"):
        FusionTrainer(model=model, args=args, train_dataset=Dataset.from_list(examples),
                      fusion_args=FusionArguments(num_teachers=3))
    bad_ids = [dict(e) for e in examples]
    bad_ids[0]["teacher_ids"] = bad_ids[0]["teacher_ids"] + 512  # the model's vocabulary has 512 ids
    with pytest.raises(ValueError, match="train_dataset: example 0: teacher_ids contains id .* outside \\[0, 512\\)"):
        FusionTrainer(model=model, args=args, train_dataset=Dataset.from_list(bad_ids))
    with pytest.raises(ValueError, match="eval_dataset is missing"):
        FusionTrainer(model=model, args=args, eval_dataset=Dataset.from_list(no_ce))
    with pytest.raises(ValueError, match="do not pass compute_loss_func"):
        FusionTrainer(model=model, args=args, compute_loss_func=lambda *a, **k: 0)
    for bad in (dict(fusion="max"), dict(lam=1.5), dict(loss_type="mse"), dict(lam_schedule="sof"),
                dict(precision="bf16"), dict(fusion_positions="all"), dict(temperature=0.0), dict(fused_lm_head="yes")):
        with pytest.raises(ValueError, match="FusionArguments"):
            FusionArguments(**bad)


def test_fused_head_falls_back_for_transformed_logits(tmp_path):
    model = tiny_llama()
    model.config.final_logit_softcapping = 30.0
    ok, why = fused_head_supported(model)
    assert not ok and "final_logit_softcapping" in why
    trainer = FusionTrainer(model=model, args=training_args(tmp_path),
                            fusion_args=FusionArguments(fused_lm_head="always"))
    with pytest.raises(ValueError, match="fused_lm_head='always' but"):
        trainer.compute_loss(model, FusionDataCollator()(synthetic_examples(2)))


def _launch_ddp(out_file, positions, fused, kind="fusion"):
    accelerate = shutil.which("accelerate")
    if accelerate is None:
        pytest.skip("the accelerate launcher is not on PATH")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    # torch.distributed.run launcher; use_cpu=True in the TrainingArguments makes it gloo on CPU
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           str(REPO / "tests" / "integration" / "ddp_worker.py"), str(out_file), positions, fused, kind]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return torch.load(out_file)


def test_two_processes_match_one_process(tmp_path):
    """accelerate launch, 2 CPU processes (gloo), 2 examples each == 1 process with all 4."""
    _, single = run_step(4, "labels", "auto", tmp_path / "single")
    assert_same_grads(_launch_ddp(tmp_path / "ddp.pt", "labels", "auto"), single)


@pytest.mark.slow
@pytest.mark.parametrize("positions, fused", [("attention", "auto"), ("labels", "never")])
def test_two_processes_match_one_process_variants(tmp_path, positions, fused):
    _, single = run_step(4, positions, fused, tmp_path / "single")
    assert_same_grads(_launch_ddp(tmp_path / "ddp.pt", positions, fused), single)


def _compute_loss_and_grads(model, batch, tmp_path, fused):
    trainer = FusionTrainer(model=model, args=training_args(tmp_path), fusion_args=FusionArguments(fused_lm_head=fused))
    model.zero_grad()
    loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    return loss.detach(), {n: p.grad.detach().double().clone() for n, p in model.named_parameters()}


def test_fused_head_with_tied_embeddings(tmp_path):
    model = tiny_llama(tie=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    batch = FusionDataCollator()(synthetic_examples(3, seed=11))
    loss_full, grads_full = _compute_loss_and_grads(model, batch, tmp_path, "never")
    loss_fused, grads_fused = _compute_loss_and_grads(model, batch, tmp_path, "always")
    assert float(loss_fused) == pytest.approx(float(loss_full), rel=1e-6)
    assert_same_grads(grads_fused, grads_full)


def test_fused_head_bf16_model(tmp_path):
    model = tiny_llama(dtype=torch.bfloat16)
    batch = FusionDataCollator()(synthetic_examples(3, seed=12))
    loss_full, grads_full = _compute_loss_and_grads(model, batch, tmp_path, "never")
    loss_fused, grads_fused = _compute_loss_and_grads(model, batch, tmp_path, "always")
    assert loss_fused.dtype == torch.float32 and math.isfinite(float(loss_fused))
    assert float(loss_fused) == pytest.approx(float(loss_full), rel=1e-2)
    head_full, head_fused = grads_full["lm_head.weight"], grads_fused["lm_head.weight"]
    assert torch.allclose(head_fused, head_full, rtol=0.05, atol=0.02 * float(head_full.abs().max()))


def test_fusion_arguments_parse_from_the_command_line():
    from transformers import HfArgumentParser

    (parsed,) = HfArgumentParser((FusionArguments,)).parse_args_into_dataclasses(
        ["--fusion", "avgce", "--lam", "0.8", "--num_teachers", "3", "--lam_schedule", "hard_and_decay",
         "--fusion_positions", "attention", "--log_components", "false"])
    assert parsed == FusionArguments(fusion="avgce", lam=0.8, num_teachers=3, lam_schedule="hard_and_decay",
                                     fusion_positions="attention", log_components=False)
