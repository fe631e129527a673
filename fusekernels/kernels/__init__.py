"""Triton kernels of fusekernels (needs the ``triton`` extra).

- ``fusion_loss_rows_triton``: fused sparse top-k fusion loss + gradient per row
  (row-level backend contract of ``fusekernels.loss``).
- ``teacher_topk_rows_triton``: teacher top-k ids/values, logsumexp and label CE in one pass.

Kernels are compiled for CUDA tensors. CPU tensors work only under the Triton interpreter, which
must be enabled with ``TRITON_INTERPRET=1`` *before* these modules are imported (Triton fixes the
mode when the kernels are decorated). The kernel modules are imported lazily so that
``import fusekernels.kernels`` and ``triton_available()`` work without triton installed.
"""
from __future__ import annotations

import importlib
import importlib.util

from .._optional import extra_hint

_EXPORTS = {
    "fusion_loss_rows_triton": "fusion_loss_triton",
    "launch_fusion_loss_rows": "fusion_loss_triton",
    "teacher_topk_rows_triton": "teacher_topk_triton",
    "launch_teacher_topk_rows": "teacher_topk_triton",
}

__all__ = ["triton_available", *_EXPORTS]


def triton_available() -> bool:
    """True when the ``triton`` package can be imported (kernels still need CUDA or the interpreter)."""
    return importlib.util.find_spec("triton") is not None


def __getattr__(name):
    if name in _EXPORTS:
        with extra_hint(f"fusekernels.kernels.{name}"):
            module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
