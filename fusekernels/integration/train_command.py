"""A training run as ``fusekernels train`` does it (:func:`run_training`), from its options.

The options are ``transformers.TrainingArguments``, :class:`FusionArguments` and the two small
classes below; the command line and config files that fill them are :mod:`fusekernels.cli.train`.
``training_args.resume_from_checkpoint`` (``latest`` or a checkpoint folder) continues an
interrupted run in its ``output_dir``: the run's options are stored there
(``fusekernels_train.json``) and a resume is refused when an option that shapes the result
differs. Without it, ``output_dir`` must be empty.
The run's length (``max_steps``, ``num_train_epochs``) may change on resume: a finished run is
trained further from its last checkpoint to the new target (the learning-rate schedule is that of
the new length, taken up at the checkpoint's step), and a target already reached trains nothing
(the run is "already complete"; the Trainer itself would train one step past it, or report a mean
loss of 0 over no step).
``latest`` takes the newest *complete* checkpoint (one whose save finished: its
``trainer_state.json``, written last, reads back), so a save interrupted half-way is skipped.
An ``output_dir`` holding only the options file of a run that failed before its first checkpoint
is rerun from scratch.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..pipeline.io import MODEL_DTYPES
from .checkpoints import checkpoint_is_complete, last_complete_checkpoint

RUN_CONFIG = "fusekernels_train.json"
logger = logging.getLogger(__name__)
# TrainingArguments that may change between an interrupted run and its resume (they do not
# change the trained weights): logging, reporting, saving, evaluation and data-loader workers.
RESUMABLE_CHANGES = ("resume_from_checkpoint", "output_dir", "logging_dir", "report_to", "run_name", "disable_tqdm",
                     "dataloader_num_workers", "dataloader_prefetch_factor", "dataloader_persistent_workers",
                     "dataloader_pin_memory", "per_device_eval_batch_size", "push_to_hub", "hub_model_id",
                     "hub_strategy", "hub_token", "hub_private_repo", "log_level", "log_level_replica")
RESUMABLE_PREFIXES = ("logging_", "save_", "eval_", "hub_")
# TrainingArguments giving the run's length: a resume may extend (or shorten) it.
LENGTH_OPTIONS = ("max_steps", "num_train_epochs")


@dataclass
class ModelArguments:
    """The student model (``fusekernels train`` options)."""

    model: str | None = field(default=None, metadata={
        "help": "Base (student) model: folder, .gguf file, bundled model name (smollm2, gemma3), Hub model id, or "
                "CONFIG:TOKENIZER for a fresh randomly initialised student to try things out (configs: tiny, small; "
                "e.g. tiny:mistral-v1: a small Llama with the tokenizer's vocabulary, seeded by --seed; see "
                "fusekernels.pipeline.students).",
        "aliases": ["--model_name_or_path", "--student"]})
    tokenizer: str | None = field(default=None, metadata={
        "help": "Tokenizer (default: the model's; for CONFIG:TOKENIZER its TOKENIZER)."})
    dtype: str | None = field(default=None, metadata={
        "help": "Weights dtype when loading (default: as saved). Mixed precision is --bf16 / --fp16.",
        "choices": MODEL_DTYPES})


@dataclass
class DataArguments:
    """Training and evaluation data (``fusekernels train`` options)."""

    data: str | None = field(default=None, metadata={
        "help": "Training data with teacher columns: `fusekernels pack` output or any saved dataset.",
        "aliases": ["--train_data"]})
    eval_data: str | None = field(default=None, metadata={
        "help": "Held-out data: texts (a text column, tokenized with the student's tokenizer) or a saved dataset "
                "with input_ids, with or without teacher columns: eval_loss, eval_clm_loss and eval_perplexity are "
                "reported (at the end, or per --eval_strategy)."})
    text_column: str = field(default="text", metadata={"help": "Column of --eval_data holding raw texts."})
    max_length: int = field(default=2048, metadata={"help": "Truncation length of raw --eval_data texts."})


def _run_config(model_args, data_args, fusion_args, training_args) -> dict:
    return {"model": asdict(model_args), "data": asdict(data_args), "fusion": asdict(fusion_args),
            "training": json.loads(training_args.to_json_string())}


def _shaping_differences(saved: dict, current: dict) -> list[str]:
    """Options that differ between a stored run configuration and the current one, except those a
    resume may change (logging, saving, evaluation, reporting)."""
    diffs = []
    for group in ("model", "data", "fusion", "training"):
        old, new = saved.get(group, {}), current[group]
        for key in sorted(set(old) | set(new)):
            if group == "training" and (key in RESUMABLE_CHANGES or key in LENGTH_OPTIONS
                                        or key.startswith(RESUMABLE_PREFIXES)):
                continue
            if group == "data" and key == "eval_data":
                continue
            if old.get(key) != new.get(key):
                diffs.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return diffs


def _length_changes(saved: dict, current: dict) -> list[str]:
    """``max_steps 4 -> 8``-style descriptions of the run-length options that a resume changes."""
    old, new = saved.get("training", {}), current["training"]
    return [f"{key} {old.get(key)} -> {new.get(key)}" for key in LENGTH_OPTIONS if old.get(key) != new.get(key)]


class AlreadyComplete(Exception):
    """Raised when a resumed run has no step left to train (before the Trainer's first step)."""

    def __init__(self, step: int):
        super().__init__(f"already complete at step {step}")
        self.step = step


def _resume_guard():
    """A ``TrainerCallback`` that stops a resumed run before its first step when the checkpoint's
    step already reaches the target (``state.max_steps``, computed by the Trainer from
    ``max_steps`` or ``num_train_epochs``); it records ``start`` and ``target``."""
    from transformers import TrainerCallback

    class ResumeGuard(TrainerCallback):
        start = target = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.start, self.target = state.global_step, state.max_steps
            if state.global_step >= state.max_steps:
                raise AlreadyComplete(state.global_step)

    return ResumeGuard()


def resolve_checkpoint(training_args) -> str | None:
    """The checkpoint to resume from (``--resume_from_checkpoint latest|true|PATH``), or None."""
    value = training_args.resume_from_checkpoint
    if value is None or str(value).lower() in ("", "false", "no", "none"):
        return None
    if str(value).lower() in ("latest", "last", "true", "yes"):
        out = Path(training_args.output_dir)
        last = last_complete_checkpoint(out)
        if last is None:
            raise ValueError(f"--resume_from_checkpoint {value}: no complete checkpoint-* folder in {out}")
        return last
    if not Path(value).is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint: checkpoint folder not found: {value}")
    if not checkpoint_is_complete(value):
        raise ValueError(f"--resume_from_checkpoint: {value} is incomplete (its save was interrupted: no readable "
                         "trainer_state.json); use an earlier checkpoint or 'latest'")
    return str(value)


def run_training(model_args, data_args, fusion_args, training_args, *, callbacks=None):
    """Train as ``fusekernels train`` does; returns ``(trainer, TrainOutput, eval metrics or None)``.

    Checks the output folder (empty, or holding the same run when resuming) before loading
    anything; stores the run configuration next to the checkpoints; saves the final model and
    tokenizer into ``output_dir``. ``TrainOutput.metrics`` also holds ``start_step`` (the
    checkpoint's step when resuming, else 0) and ``trained_steps`` (0 when a resumed run was
    already complete: then ``training_loss`` is NaN and nothing was trained).
    """
    from ..pipeline.io import check_model_path, load_model, load_rows, load_tokenizer, model_tokenizer
    from ..pipeline.students import fresh_student, is_student_spec, parse_student_spec
    from ..storage import atomic_write_json, check_output_dir, check_writable
    from .trainer import FusionTrainer

    out = Path(training_args.output_dir)
    checkpoint = resolve_checkpoint(training_args)
    current = _run_config(model_args, data_args, fusion_args, training_args)
    lengths: list[str] = []
    if checkpoint is None:
        # a folder holding only the options file of a run that failed before its first checkpoint
        # is this command's own leftover: the run starts again there
        check_output_dir(out, inputs=[model_args.model, data_args.data, data_args.eval_data], arg="--output_dir",
                         ignore=(RUN_CONFIG,))
    else:
        stored = out / RUN_CONFIG
        if not stored.is_file():
            raise ValueError(f"{out} has no {RUN_CONFIG}: it was not written by fusekernels train, cannot resume")
        saved = json.loads(stored.read_text(encoding="utf-8"))
        diffs = _shaping_differences(saved, current)
        if diffs:
            raise ValueError("cannot resume: options that shape the result changed since the interrupted run ("
                             + "; ".join(diffs) + ")")
        check_writable(out, arg="--output_dir")
        lengths = _length_changes(saved, current)
        logger.info(f"train: resuming from {checkpoint}" + (f" and changing the run's length ({', '.join(lengths)})"
                                                            if lengths else ""))
    # a fresh student's CONFIG:TOKENIZER, or the model argument, checked before any loading
    student = parse_student_spec(model_args.model) if is_student_spec(model_args.model) else None
    if student is None:
        check_model_path(model_args.model, arg="--model")
    tokenizer = load_tokenizer(model_args.tokenizer or (student[1] if student else model_tokenizer(model_args.model)))
    train_data = load_rows(data_args.data)
    eval_data = load_rows(data_args.eval_data) if data_args.eval_data else None
    if eval_data is not None and "input_ids" not in eval_data.column_names:
        from ..pipeline.extract import tokenize_texts

        eval_data = tokenize_texts(tokenizer, eval_data, max_length=data_args.max_length,
                                   text_column=data_args.text_column)
    kwargs = {}
    if model_args.dtype:
        import torch

        kwargs["dtype"] = getattr(torch, model_args.dtype)
    if student:  # a new student for this tokenizer, initialised from the run's seed
        model = fresh_student(student[0], tokenizer, seed=training_args.seed, name=model_args.model)
        if model_args.dtype:
            model = model.to(kwargs["dtype"])
    else:
        model = load_model(model_args.model, **kwargs)
    if checkpoint is None:
        out.mkdir(parents=True, exist_ok=True)
    if checkpoint is None or lengths:  # a resume with a new length records it for the next resume
        atomic_write_json(out / RUN_CONFIG, current)
    guard = _resume_guard() if checkpoint is not None else None
    trainer = FusionTrainer(model=model, args=training_args, train_dataset=train_data, eval_dataset=eval_data,
                            processing_class=tokenizer, fusion_args=fusion_args,
                            callbacks=list(callbacks or []) + ([guard] if guard else []))
    try:
        result = trainer.train(resume_from_checkpoint=checkpoint)
        start = guard.start if guard else 0
        result.metrics.update(start_step=start, trained_steps=result.global_step - start)
        if guard and guard.target > start:
            logger.info(f"train: resumed at step {start}, trained to step {result.global_step} of {guard.target}")
    except AlreadyComplete as done:
        from transformers.trainer_utils import TrainOutput

        logger.info(f"train: already complete at step {done.step} (the target of --max_steps / "
                    "--num_train_epochs): nothing to train")
        result = TrainOutput(done.step, float("nan"), {"start_step": done.step, "trained_steps": 0})
    trainer.save_model(str(out))  # also when complete: a run killed before its final save lacks it
    metrics = None
    if eval_data is not None:
        metrics = trainer.evaluate()
    return trainer, result, metrics
