"""Sparse top-k fusion loss for FuseLLM / FuseChat and teacher-side top-k.

- :func:`fusion_loss` / :class:`FusionLoss`: ``lam * CLM + (1 - lam) * fusion`` against teachers'
  sparse top-k distributions, gradient computed in the forward, Triton on CUDA, torch elsewhere.
- :func:`teacher_topk`: top-k ids/logits, logsumexp and token CE of teacher logits in one pass.
- :func:`fusion_loss_rows`: the row-level backend contract (for fused lm-head integrations).
- :func:`fused_linear_fusion_loss`: the same loss from hidden states and the LM-head weight, in
  token chunks (module ``fused_linear``, imported on first use).
"""
import importlib

from .backend import fusion_loss_rows, resolve_backend, teacher_topk_rows
from .functional import FusionLossOutput, fusion_loss
from .module import FusionLoss
from .teacher import TeacherTopK, sequence_ce, teacher_topk

__all__ = [
    "FusionLoss",
    "FusionLossOutput",
    "TeacherTopK",
    "fusion_loss",
    "fusion_loss_rows",
    "fused_linear_fusion_loss",
    "resolve_backend",
    "sequence_ce",
    "teacher_topk",
    "teacher_topk_rows",
]


def __getattr__(name):
    if name == "fused_linear_fusion_loss":
        return importlib.import_module(f"{__name__}.fused_linear").fused_linear_fusion_loss
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
