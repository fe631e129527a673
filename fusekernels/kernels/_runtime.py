"""Shared launch-side helpers of the Triton kernels: interpreter detection and argument checks.

Triton decides at ``@triton.jit`` decoration time (module import) whether a kernel is compiled
for the GPU or run by its CPU interpreter (``TRITON_INTERPRET=1``). CPU tensors therefore only
work when the environment variable was set before the kernel modules were imported; the checks
here turn a mismatch into a clear error instead of a driver failure.
"""
from __future__ import annotations

import os

import torch

FLOAT_LOGIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def interpreter_requested() -> bool:
    """True when ``TRITON_INTERPRET`` asks Triton to interpret kernels on the CPU."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def is_interpreted(kernel) -> bool:
    """True when ``kernel`` (a ``@triton.jit`` object) runs in the Triton CPU interpreter."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(kernel, InterpretedFunction)


def check_launch_device(kernel, device: torch.device, module_name: str) -> None:
    """Raise unless ``kernel`` can run on tensors living on ``device``.

    CUDA tensors run compiled kernels (or interpreted ones, slowly); CPU tensors need the
    interpreter, which must have been enabled before ``module_name`` was imported.
    """
    if device.type == "cuda" or (device.type == "cpu" and is_interpreted(kernel)):
        return
    if device.type == "cpu":
        raise RuntimeError(
            f"{module_name}: CPU tensors need the Triton interpreter; set TRITON_INTERPRET=1 before "
            f"importing {module_name} (or pass CUDA tensors)")
    raise RuntimeError(f"{module_name}: unsupported device {device} (CUDA, or CPU under TRITON_INTERPRET=1)")


def require_tensor(name: str, value, *, ndim: int, dtypes, device: torch.device | None = None,
                   shape: tuple | None = None) -> torch.Tensor:
    """Validate a kernel argument: tensor, rank, dtype, contiguity, device and (partial) shape.

    ``shape`` entries that are ``None`` are not checked. Returns ``value`` unchanged.
    """
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(value.shape)}")
    if value.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({allowed}), got {str(value.dtype).replace('torch.', '')}")
    if shape is not None:
        for axis, (want, got) in enumerate(zip(shape, value.shape)):
            if want is not None and want != got:
                raise ValueError(f"{name} must have size {want} in dimension {axis}, got shape {tuple(value.shape)}")
    if device is not None and value.device != device:
        raise ValueError(f"{name} is on {value.device} but the logits are on {device}")
    if not value.is_contiguous():
        raise ValueError(f"{name} must be contiguous")
    return value


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= max(n, 1)."""
    n = max(int(n), 1)
    return 1 << (n - 1).bit_length()
