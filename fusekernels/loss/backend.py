"""Backend selection for the row-level fusion-loss and teacher top-k contracts.

Row-level contract (implemented by ``torch_backend.fusion_loss_rows_torch`` and by the Triton kernel
``fusekernels.kernels.fusion_loss_triton.fusion_loss_rows_triton``), per row n with
p = softmax(z_n) in fp32, lse = logsumexp(z_n), q the fused sparse target and m = sum_v q(v):

- clm    = lse - z_n[y]                      (0 where y == ignore_index)
- ce_fus = m * lse - sum_v q(v) z_n(v);  kl_fus = ce_fus + sum_{q(v) > 0} q(v) log q(v)
- row_loss = clm_scale * clm + fusion_scale * fus
- grad = (clm_scale * [y valid] + fusion_scale * m) * p - clm_scale * onehot(y) - fusion_scale * q

Rows whose two scales are 0 give loss 0 and gradient 0 (never NaN).
"""
from __future__ import annotations

import os

import torch

from .._optional import MissingExtraError
from .registry import BACKENDS
from .torch_backend import fusion_loss_rows_torch, fusion_loss_terms_torch, teacher_topk_rows_torch


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map "auto" | "triton" | "torch" to the backend that will run on ``device``.

    "auto" picks Triton for CUDA tensors when triton imports, torch otherwise. "triton" on a CPU
    tensor is only possible under the Triton interpreter (TRITON_INTERPRET=1, used by tests).
    """
    BACKENDS.check(backend)
    if backend == "torch":
        return "torch"
    if backend == "auto":
        return "triton" if device.type == "cuda" and _triton_importable() else "torch"
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            f"backend='triton' needs CUDA tensors (got device {device}); on CPU it only runs under "
            "the Triton interpreter (TRITON_INTERPRET=1 set before triton is imported)")
    if not _triton_importable():
        raise MissingExtraError("backend='triton' needs the 'triton' package: pip install 'fusekernels[triton]'",
                                name="triton")
    return "triton"


def _triton_fusion_rows():
    try:
        from ..kernels.fusion_loss_triton import fusion_loss_rows_triton
    except ImportError as err:
        raise ImportError(f"the Triton fusion-loss kernel could not be imported: {err}") from err
    return fusion_loss_rows_triton


def _triton_teacher_rows():
    try:
        from ..kernels.teacher_topk_triton import teacher_topk_rows_triton
    except ImportError as err:
        raise ImportError(f"the Triton teacher top-k kernel could not be imported: {err}") from err
    return teacher_topk_rows_triton


def _use_triton_fusion(backend: str, logits, teacher_ids) -> bool:
    """Triton when resolved so; "auto" falls back to torch for shapes the kernel does not take
    (T * k above its register budget) instead of failing."""
    if resolve_backend(backend, logits.device) != "triton":
        return False
    if backend == "auto":
        from ..kernels.fusion_loss_triton import MAX_TEACHER_ENTRIES
        return teacher_ids.shape[1] * teacher_ids.shape[2] <= MAX_TEACHER_ENTRIES
    return True


def fusion_loss_rows(logits, labels, teacher_ids, teacher_logits, teacher_weights, clm_scale,
                     fusion_scale, *, temperature: float, loss_type: str, ignore_index: int,
                     compute_grad: bool, grad_inplace: bool, backend: str = "auto", probs_given: bool = False):
    """Row-level contract on the chosen backend (inputs already validated; see module doc).

    logits [N, V] contiguous fp32/bf16/fp16; labels [N] int64; teacher_ids [N, T, k] int32 in
    [0, V); teacher_logits [N, T, k] float32 (-inf padding); teacher_weights [N, T] float32;
    clm_scale / fusion_scale [N] float32. Returns (row_loss [N] float32, grad [N, V] or None).
    ``probs_given``: teacher_logits hold target probabilities (-inf = padding), not logits.
    """
    kwargs = dict(temperature=float(temperature), loss_type=loss_type, ignore_index=int(ignore_index),
                  compute_grad=compute_grad, grad_inplace=grad_inplace, probs_given=bool(probs_given))
    args = (logits, labels, teacher_ids, teacher_logits, teacher_weights, clm_scale, fusion_scale)
    if _use_triton_fusion(backend, logits, teacher_ids):
        return _triton_fusion_rows()(*args, **kwargs)
    return fusion_loss_rows_torch(*args, **kwargs)


def fusion_loss_rows_with_terms(logits, labels, teacher_ids, teacher_logits, teacher_weights,
                                clm_scale, fusion_scale, clm_unit, fusion_unit, *, temperature,
                                loss_type, ignore_index, compute_grad, grad_inplace, backend="auto",
                                probs_given=False):
    """Like ``fusion_loss_rows`` and also the unit-scaled components (for logging).

    Returns (row_loss, grad, clm_rows, fusion_rows) where clm_rows = clm_unit * clm and
    fusion_rows = fusion_unit * fus per row ([N] float32). The torch backend gets them from the
    same pass; other backends run two extra forward-only passes.
    """
    kwargs = dict(temperature=float(temperature), loss_type=loss_type, ignore_index=int(ignore_index),
                  probs_given=bool(probs_given))
    if not _use_triton_fusion(backend, logits, teacher_ids):
        row_loss, grad, clm, fus = fusion_loss_terms_torch(
            logits, labels, teacher_ids, teacher_logits, teacher_weights, clm_scale, fusion_scale,
            compute_grad=compute_grad, grad_inplace=grad_inplace, **kwargs)
        clm_rows = torch.where(clm_unit != 0, clm_unit * clm, torch.zeros_like(clm))
        fus_rows = torch.where(fusion_unit != 0, fusion_unit * fus, torch.zeros_like(fus))
        return row_loss, grad, clm_rows, fus_rows
    kernel = _triton_fusion_rows()
    head = (logits, labels, teacher_ids, teacher_logits, teacher_weights)
    zeros = torch.zeros_like(clm_unit)
    # The component passes read the logits before a possible in-place gradient overwrites them.
    clm_rows, _ = kernel(*head, clm_unit, zeros, compute_grad=False, grad_inplace=False, **kwargs)
    fus_rows, _ = kernel(*head, zeros, fusion_unit, compute_grad=False, grad_inplace=False, **kwargs)
    row_loss, grad = kernel(*head, clm_scale, fusion_scale, compute_grad=compute_grad,
                            grad_inplace=grad_inplace, **kwargs)
    return row_loss, grad, clm_rows, fus_rows


def teacher_topk_rows(logits, labels, k: int, ignore_index: int = -100, backend: str = "auto"):
    """Teacher-side contract on the chosen backend: (ids int32 [N, k], values f32 [N, k] sorted
    descending, lse f32 [N], ce f32 [N]) from logits [N, V] and labels [N] int64 or None."""
    use_triton = resolve_backend(backend, logits.device) == "triton"
    if use_triton and backend == "auto":
        from ..kernels.teacher_topk_triton import MAX_TOP_K
        use_triton = k <= MAX_TOP_K
    if use_triton:
        return _triton_teacher_rows()(logits, labels, k, ignore_index)
    return teacher_topk_rows_torch(logits, labels, k, ignore_index)
