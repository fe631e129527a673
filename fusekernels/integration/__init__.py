"""Hugging Face integration: the fusion data collator, ``FusionTrainer`` and, for a plain
``transformers.Trainer``, the ``compute_loss_func`` ``FusionLossFunction``.

``FusionDataCollator`` (and the column format it documents) needs only numpy and torch; the
trainer names are imported lazily because they need ``transformers`` (the ``hf`` extra).
"""
import importlib

from .._optional import extra_hint
from .collator import TEACHER_COLUMNS, FusionDataCollator
from .schedules import LAM_SCHEDULES, lam_at_step

_TRAINER_NAMES = ("FusionArguments", "FusionTrainer", "fusion_compute_loss", "fused_head_supported", "shift_labels")
_LOSS_FUNCTION_NAMES = ("FusionLossFunction",)
_TRL_NAMES = ("FusionSFTTrainer",)  # the trl extra

__all__ = ["FusionDataCollator", "TEACHER_COLUMNS", "LAM_SCHEDULES", "lam_at_step", *_TRAINER_NAMES,
           *_LOSS_FUNCTION_NAMES, *_TRL_NAMES]


def __getattr__(name):
    if name in _TRAINER_NAMES or name in _LOSS_FUNCTION_NAMES or name in _TRL_NAMES:
        module = "trainer" if name in _TRAINER_NAMES else "loss_function" if name in _LOSS_FUNCTION_NAMES else "trl"
        with extra_hint(f"fusekernels.integration.{name}"):
            return getattr(importlib.import_module(f"{__name__}.{module}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
