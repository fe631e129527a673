"""The fusion loss as a ``compute_loss_func`` of a plain ``transformers.Trainer``.

A plain ``Trainer`` calls ``compute_loss_func(outputs, labels, num_items_in_batch=...)`` after
``labels = inputs.pop("labels")`` and ``outputs = model(**inputs)``: the teacher tensors are not
among its arguments. :class:`FusionLossFunction` gets them from the model call itself: a forward
pre-hook on the model pops ``teacher_ids`` / ``teacher_logits`` / ``teacher_ce`` from the forward
keyword arguments (so the model never sees them) and keeps them, with the ``attention_mask``,
for the ``compute_loss_func`` call that follows the forward in the same step::

    loss_fn = FusionLossFunction(model, FusionArguments(fusion="mince", lam=0.9))
    trainer = Trainer(model=model, args=TrainingArguments(..., remove_unused_columns=False),
                      train_dataset=dataset, data_collator=FusionDataCollator(pad_token_id=pad_id),
                      compute_loss_func=loss_fn, callbacks=[loss_fn])

Requirements and limits:

- ``remove_unused_columns=False``: the Trainer otherwise drops the teacher columns, which the
  model's ``forward`` does not name (:class:`FusionTrainer` keeps them itself).
- ``callbacks=[loss_fn]`` lets the loss follow the ``lam`` schedule (it reads the training
  step) and checks the arguments when training starts; it is required for
  ``lam_schedule="hard_and_decay"``.
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

import torch
from torch import nn
from transformers import TrainerCallback

from .collator import TEACHER_COLUMNS
from .schedules import lam_at_step
from .trainer import FusionArguments, fusion_compute_loss

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
            pre-hook that takes the teacher columns out of its keyword arguments.
        fusion_args: :class:`FusionArguments`; ``fusion_positions`` must be ``"labels"`` and
            ``fused_lm_head`` / ``log_components`` do not apply.

    ``__call__(outputs, labels, num_items_in_batch=None)`` returns the 0-d loss of the batch the
    model has just seen (see the module docstring), normalised by ``num_items_in_batch`` (label
    tokens after the shift of the whole accumulated batch; None = this batch's count).
    ``remove()`` takes the hook off the model.
    """

    def __init__(self, model: nn.Module, fusion_args: FusionArguments | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.fusion_args = fusion_args if fusion_args is not None else FusionArguments()
        if not isinstance(self.fusion_args, FusionArguments):
            raise TypeError(f"fusion_args must be a FusionArguments, got {type(self.fusion_args).__name__}")
        if self.fusion_args.fusion_positions != "labels":
            raise ValueError("FusionLossFunction supports fusion_positions='labels' only: a plain Trainer passes the "
                             "label count of the accumulated batch, not its attended-token count; use FusionTrainer "
                             "for fusion_positions='attention'")
        self.module = inner_module(model)
        self._batch = None
        self._state = None
        self._handle = self.module.register_forward_pre_hook(self._take_teacher_columns, with_kwargs=True)

    def _take_teacher_columns(self, _module, args, kwargs):
        """Forward pre-hook: pop the teacher tensors from the call and keep them for the loss."""
        teacher = {name: kwargs.pop(name) for name in TEACHER_COLUMNS if name in kwargs}
        # A call without teacher columns (generation, a manual forward) clears the previous batch,
        # so the loss can never pair the logits of one call with the targets of another.
        self._batch = (teacher, kwargs.get("attention_mask")) if teacher else None
        return args, kwargs

    def current_lam(self) -> float:
        """lam at the current training step under ``fusion_args.lam_schedule``."""
        config = self.fusion_args
        if config.lam_schedule == "hard":
            return config.lam
        if config.lam_schedule == "soft":
            return "soft"  # per row, from the teachers' rewards
        if self._state is None:
            raise ValueError(f"lam_schedule={config.lam_schedule!r} follows the training step: pass the loss "
                             "function as a callback too, Trainer(compute_loss_func=loss_fn, callbacks=[loss_fn])")
        return lam_at_step(config.lam_schedule, config.lam, self._state.global_step, max(self._state.max_steps, 1))

    def __call__(self, outputs, labels, num_items_in_batch=None) -> torch.Tensor:
        batch, self._batch = self._batch, None
        if batch is None:
            raise ValueError(_REMOVE_UNUSED)
        teacher, attention_mask = batch
        missing = [name for name in ("teacher_ids", "teacher_logits") if name not in teacher]
        if missing:
            raise ValueError(f"the model call had no {missing}: {_REMOVE_UNUSED}")
        return fusion_compute_loss(outputs, labels, num_items_in_batch, **teacher, attention_mask=attention_mask,
                                   config=self.fusion_args, lam=self.current_lam())

    def remove(self) -> None:
        """Remove the forward pre-hook from the model."""
        self._handle.remove()
        self._batch = None

    # ------------------------------------------------------------------ TrainerCallback
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if args.remove_unused_columns:
            raise ValueError(f"FusionLossFunction: {_REMOVE_UNUSED}")
        if args.n_gpu > 1:
            raise ValueError("FusionLossFunction does not support torch.nn.DataParallel (n_gpu > 1); launch one "
                             "process per device with accelerate or torchrun instead")
        if model is not None and inner_module(model) is not self.module:
            raise ValueError("the Trainer trains another model than the one FusionLossFunction hooked")
        self._state = state  # the live TrainerState: global_step / max_steps for the lam schedule
