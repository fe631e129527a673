"""The fusion loss as a ``compute_loss_func`` of a plain ``transformers.Trainer``.

A plain ``Trainer`` calls ``compute_loss_func(outputs, labels, num_items_in_batch=...)`` after
``labels = inputs.pop("labels")`` and ``outputs = model(**inputs)``: the teacher tensors are not
among its arguments. :class:`FusionLossFunction` gets them from the model call itself: a forward
pre-hook on the model pops ``teacher_ids`` / ``teacher_logits`` / ``teacher_ce`` from the forward
keyword arguments (so the model never sees them) and keeps them, with the ``attention_mask``,
for the ``compute_loss_func`` call that follows the forward in the same step. One call wires
the object into an existing ``Trainer``::

    trainer = Trainer(model=model, args=TrainingArguments(...), train_dataset=dataset,
                      data_collator=FusionDataCollator(pad_token_id=pad_id))
    FusionLossFunction(FusionArguments(fusion="mince", lam=0.9)).attach(trainer)

``attach`` makes it the trainer's ``compute_loss_func`` and a callback (the ``lam`` schedule
follows the training step; arguments are checked when training starts), keeps the teacher
columns through ``remove_unused_columns``, lets the collator pass plain evaluation batches (the
loss is then the causal-LM loss) and logs ``clm_loss`` / ``fusion_loss`` / ``lam`` next to
``loss``, and ``eval_clm_loss`` / ``eval_perplexity`` next to ``eval_loss``, like
:class:`FusionTrainer`. The explicit form ``FusionLossFunction(model, fusion_args)`` with
``Trainer(compute_loss_func=loss_fn, callbacks=[loss_fn])`` and
``TrainingArguments(remove_unused_columns=False)`` still works (without the component logs).

Requirements and limits:

- The model computes its full logits ``[B, T, V]`` (no chunked LM head as in ``FusionTrainer``).
- Gradient accumulation and multi-process training are exact with ``fusion_positions="labels"``
  (the fusion term covers the rows with a CLM label, whose count Hugging Face passes as
  ``num_items_in_batch``). ``"attention"`` needs the count of attended tokens of the whole
  accumulated batch, which a plain Trainer does not compute: use :class:`FusionTrainer` for it.
- The hook sits on the model given here, the module that DDP / accelerate wrap (a wrapper passed
  in is unwrapped through ``.module``), so it fires inside the wrapped forward. One model call
  per loss call, as the Trainer makes: ``torch.nn.DataParallel`` (several replicas in one
  process) is not supported.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import TrainerCallback

from .collator import CHUNK_COLUMNS, TEACHER_COLUMNS, TOKEN_METRIC_COLUMN, FusionDataCollator
from .metrics import ComponentMeter
from .schedules import lam_at_step
from .trainer import FusionArguments, fusion_compute_loss, shift_labels

_REMOVE_UNUSED = ("the teacher columns did not reach the model: pass TrainingArguments(remove_unused_columns=False) "
                  "(the Trainer otherwise drops the columns the model's forward does not name) and batches from "
                  "FusionDataCollator")


def inner_module(model: nn.Module) -> nn.Module:
    """The module under DDP / accelerate / ``torch.compile`` wrappers (``.module``, ``._orig_mod``)."""
    while True:
        inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


class FusionLossFunction(TrainerCallback):
    """``compute_loss_func`` of a plain ``Trainer`` computing ``lam * CLM + (1 - lam) * fusion``.

    Args:
        model: the model the Trainer trains (or a DDP-style wrapper of it); gets a forward
            pre-hook that takes the teacher columns out of its keyword arguments. May be left
            out (or a :class:`FusionArguments` passed first) when :meth:`attach` follows.
        fusion_args: :class:`FusionArguments`; ``fusion_positions`` must be ``"labels"`` and
            ``fused_lm_head`` does not apply (the Trainer computes the full logits).

    ``__call__(outputs, labels, num_items_in_batch=None)`` returns the 0-d loss of the batch the
    model has just seen (see the module docstring), normalised by ``num_items_in_batch`` (label
    tokens after the shift of the whole accumulated batch; None = this batch's count). In
    evaluation, a batch without teacher columns gets the causal-LM loss. ``remove()`` takes the
    hook off the model.
    """

    def __init__(self, model: nn.Module | FusionArguments | None = None, fusion_args: FusionArguments | None = None):
        if isinstance(model, FusionArguments) and fusion_args is None:
            model, fusion_args = None, model
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.fusion_args = fusion_args if fusion_args is not None else FusionArguments()
        if not isinstance(self.fusion_args, FusionArguments):
            raise TypeError(f"fusion_args must be a FusionArguments, got {type(self.fusion_args).__name__}")
        if self.fusion_args.fusion_positions != "labels":
            raise ValueError("FusionLossFunction supports fusion_positions='labels' only: a plain Trainer passes the "
                             "label count of the accumulated batch, not its attended-token count; use FusionTrainer "
                             "for fusion_positions='attention'")
        self.module = None
        self._handle = None
        self._batch = None
        self._state = None
        self._trainer = None
        self._meter = ComponentMeter()
        if model is not None:
            self._hook(model)

    def _hook(self, model: nn.Module) -> None:
        self.module = inner_module(model)
        self._handle = self.module.register_forward_pre_hook(self._take_teacher_columns, with_kwargs=True)

    def _take_teacher_columns(self, _module, args, kwargs):
        """Forward pre-hook: pop the teacher tensors from the call and keep them for the loss."""
        teacher = {name: kwargs.pop(name) for name in (*TEACHER_COLUMNS, *CHUNK_COLUMNS) if name in kwargs}
        # A call without teacher columns (generation, a manual forward, a plain eval batch) clears
        # the previous batch, so the loss can never pair the logits of one call with the targets
        # of another.
        self._batch = (teacher, kwargs.get("attention_mask")) if teacher else None
        return args, kwargs

    # ------------------------------------------------------------------ wiring
    def attach(self, trainer) -> "FusionLossFunction":
        """Wire this loss into ``trainer`` (a ``transformers.Trainer``): its ``compute_loss_func``,
        a callback, teacher columns kept by ``remove_unused_columns``, plain evaluation batches
        accepted by a :class:`FusionDataCollator`, and the component logs. Returns ``self``."""
        if self._trainer is not None:
            raise ValueError("this FusionLossFunction is already attached to a Trainer")
        if getattr(trainer, "compute_loss_func", None) not in (None, self):
            raise ValueError("the Trainer already has a compute_loss_func; attach replaces it, pass none")
        if self.module is None:
            self._hook(trainer.model)
        elif inner_module(trainer.model) is not self.module:
            raise ValueError("the Trainer trains another model than the one FusionLossFunction hooked")
        trainer.compute_loss_func = self
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        trainer._set_signature_columns_if_needed()  # the columns kept by remove_unused_columns
        for column in (*TEACHER_COLUMNS, *CHUNK_COLUMNS, TOKEN_METRIC_COLUMN, "position_ids"):
            if column not in trainer._signature_columns:
                trainer._signature_columns.append(column)
        if isinstance(trainer.data_collator, FusionDataCollator) and not trainer.data_collator.allow_plain:
            trainer.data_collator = copy.copy(trainer.data_collator)
            trainer.data_collator.allow_plain = True
        self._trainer = trainer
        log = trainer.log

        def log_with_components(logs, *args, **kwargs):
            self._add_logs(logs)
            return log(logs, *args, **kwargs)

        trainer.log = log_with_components
        return self

    def _reduce(self, tensor, reduction):
        trainer = self._trainer
        tensor = tensor.to(trainer.args.device)
        return trainer.accelerator.reduce(tensor, reduction=reduction) if trainer.args.world_size > 1 else tensor

    def _add_logs(self, logs: dict) -> None:
        """Components next to a training ``loss``; held-out CLM loss and perplexity next to an
        evaluation's ``<prefix>_loss`` (``evaluate`` logs its metrics dict, so they are returned too)."""
        if "loss" in logs:
            logs.update(self._meter.train_logs(self._trainer.state.global_step, self._reduce))
            return
        prefixes = [k[:-len("_loss")] for k in logs if k.endswith("_loss") and f"{k[:-5]}_runtime" in logs]
        if prefixes:
            logs.update(self._meter.eval_logs(prefixes[0], self._reduce))

    # ------------------------------------------------------------------ loss
    def current_lam(self) -> float:
        """lam at the current training step under ``fusion_args.lam_schedule``."""
        config = self.fusion_args
        if config.lam_schedule == "hard":
            return config.lam
        if config.lam_schedule == "soft":
            return "soft"  # per row, from the teachers' rewards
        if self._state is None:
            raise ValueError(f"lam_schedule={config.lam_schedule!r} follows the training step: attach the loss to the "
                             "Trainer (loss_fn.attach(trainer)) or pass it as a callback too, "
                             "Trainer(compute_loss_func=loss_fn, callbacks=[loss_fn])")
        return lam_at_step(config.lam_schedule, config.lam, self._state.global_step, max(self._state.max_steps, 1))

    def __call__(self, outputs, labels, num_items_in_batch=None) -> torch.Tensor:
        if self.module is None:
            raise ValueError("FusionLossFunction has no model: pass it to the constructor or call attach(trainer)")
        batch, self._batch = self._batch, None
        training = self.module.training
        if batch is None:
            if training or labels is None:
                raise ValueError(_REMOVE_UNUSED)
            return self._clm_loss(outputs, labels)
        teacher, attention_mask = batch
        missing = [name for name in ("teacher_ids", "teacher_logits") if name not in teacher]
        if missing:
            raise ValueError(f"the model call had no {missing}: {_REMOVE_UNUSED}")
        components = self._trainer is not None and (self.fusion_args.log_components or not training)
        lam = self.current_lam()
        result = fusion_compute_loss(outputs, labels, num_items_in_batch if training else None, **teacher,
                                     attention_mask=attention_mask, config=self.fusion_args, lam=lam,
                                     return_components=components)
        if not components:
            return result
        if training:
            args = self._trainer.args
            scale = self._trainer.accelerator.num_processes if args.average_tokens_across_devices else 1
            self._meter.add_train(result.clm_loss, result.fusion_loss, lam, scale=scale if num_items_in_batch
                                  is not None else 1, step=self._state.global_step if self._state else 0)
        else:
            self._meter.add_eval(result.clm_loss, shift_labels(labels))
        return result.loss

    def _clm_loss(self, outputs, labels) -> torch.Tensor:
        """Causal-LM loss of a plain evaluation batch (mean over its label tokens, fp32)."""
        logits = outputs.get("logits") if isinstance(outputs, dict) else getattr(outputs, "logits", None)
        target = shift_labels(labels)
        loss = nn.functional.cross_entropy(logits.flatten(0, -2).float(), target.flatten(), ignore_index=-100,
                                           reduction="sum") / (target != -100).sum().clamp_min(1)
        self._meter.add_eval(loss, target)
        return loss

    def remove(self) -> None:
        """Remove the forward pre-hook from the model."""
        if self._handle is not None:
            self._handle.remove()
        self._batch = None

    # ------------------------------------------------------------------ TrainerCallback
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if args.remove_unused_columns and self._trainer is None:
            raise ValueError(f"FusionLossFunction: {_REMOVE_UNUSED}")
        if args.n_gpu > 1:
            raise ValueError("FusionLossFunction does not support torch.nn.DataParallel (n_gpu > 1); launch one "
                             "process per device with accelerate or torchrun instead")
        if model is not None and inner_module(model) is not self.module:
            raise ValueError("the Trainer trains another model than the one FusionLossFunction hooked")
        self._state = state  # the live TrainerState: global_step / max_steps for the lam schedule

    def on_evaluate(self, args, state, control, **kwargs):
        self._meter.reset_eval()
