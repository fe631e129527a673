"""Validation and flattening of the public fusion-loss inputs into the row-level contract.

Every check raises a ValueError / TypeError that names the offending argument, so that bad data
fails loudly before any kernel runs (a wrong id would otherwise be a silent out-of-bounds read).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

LOGIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


@dataclass
class FlatInputs:
    """Row-level view of one batch. N rows, T teachers, k entries per teacher."""

    lead_shape: torch.Size      # the [...] leading shape of logits (N = its product)
    logits: torch.Tensor        # [N, V] contiguous, original dtype
    labels: torch.Tensor        # [N] int64 (ignore_index where no CLM term)
    teacher_ids: torch.Tensor   # [N, T, k] int32 in [0, V) (padding entries set to 0)
    teacher_logits: torch.Tensor  # [N, T, k] float32 or float64, -inf at padding entries
    present: torch.Tensor       # [N, T] bool: teacher has at least one valid entry at the row


def _require(cond: bool, message: str, exc=ValueError):
    if not cond:
        raise exc(message)


def _check_tensor(name, value, dtypes, kind):
    _require(isinstance(value, torch.Tensor), f"{name} must be a torch.Tensor, got {type(value).__name__}",
             TypeError)
    _require(value.dtype in dtypes, f"{name} must be {kind}, got dtype {value.dtype}", TypeError)


def _check_device(name, value, device):
    _require(value.device == device, f"{name} is on {value.device} but logits are on {device}")


def _check_shape(name, value, expected, what):
    _require(tuple(value.shape) == tuple(expected),
             f"{name} must have shape {tuple(expected)} ({what}), got {tuple(value.shape)}")


def broadcast_per_teacher(name, value, lead_shape, n_teachers, device, dtypes=None):
    """Broadcast a per-row-and-teacher tensor [..., T] (or e.g. per sequence [B, 1, T]) to
    [N, T]. Returns None for None."""
    if value is None:
        return None
    _check_tensor(name, value, dtypes or (torch.float16, torch.bfloat16, torch.float32, torch.float64),
                  "a floating tensor" if dtypes is None else "an integer tensor")
    _check_device(name, value, device)
    target = (*lead_shape, n_teachers)
    try:
        value = torch.broadcast_to(value, target)
    except RuntimeError:
        raise ValueError(f"{name} must have shape {target} ([..., T]) or broadcast to it, "
                         f"got {tuple(value.shape)}") from None
    return value.reshape(math.prod(lead_shape), n_teachers)  # explicit N: -1 is ambiguous for N = 0


def flatten_inputs(logits, labels, teacher_ids, teacher_logits, teacher_counts, ignore_index) -> FlatInputs:
    """Check shapes, dtypes, devices, ranges and NaN; turn counts into -inf padding; flatten rows."""
    _check_tensor("logits", logits, LOGIT_DTYPES, "a float32/bfloat16/float16/float64 tensor")
    _require(logits.dim() >= 1, "logits must have shape [..., V]")
    lead, vocab = logits.shape[:-1], logits.shape[-1]
    _require(vocab > 0, "logits must have a non-empty vocabulary dimension (V > 0)")
    device = logits.device
    n = lead.numel()

    _check_tensor("teacher_ids", teacher_ids, INT_DTYPES, "an integer tensor (int32 or int64)")
    _check_tensor("teacher_logits", teacher_logits, (torch.float16, torch.bfloat16, torch.float32, torch.float64),
                  "a floating tensor")
    _check_device("teacher_ids", teacher_ids, device)
    _check_device("teacher_logits", teacher_logits, device)
    _require(teacher_ids.dim() == len(lead) + 2,
             f"teacher_ids must have shape [..., T, k] with [...] = {tuple(lead)}, got {tuple(teacher_ids.shape)}")
    n_teachers, k = teacher_ids.shape[-2], teacher_ids.shape[-1]
    _check_shape("teacher_ids", teacher_ids, (*lead, n_teachers, k), "[..., T, k] matching logits")
    _require(n_teachers > 0 and k > 0, f"teacher_ids needs T > 0 teachers and k > 0 entries, got T={n_teachers}, k={k}")
    _check_shape("teacher_logits", teacher_logits, teacher_ids.shape, "same as teacher_ids")

    work = torch.float64 if logits.dtype == torch.float64 else torch.float32
    t_logits = teacher_logits.reshape(n, n_teachers, k).to(work)
    if not bool((t_logits < float("inf")).all()):  # one pass catches NaN and +inf alike
        _require(not bool(torch.isnan(t_logits).any()), "teacher_logits contains NaN")
        raise ValueError("teacher_logits contains +inf (use -inf for padding)")
    if teacher_counts is not None:
        _check_tensor("teacher_counts", teacher_counts, INT_DTYPES, "an integer tensor")
        _check_device("teacher_counts", teacher_counts, device)
        _check_shape("teacher_counts", teacher_counts, (*lead, n_teachers), "[..., T]")
        counts = teacher_counts.reshape(n, n_teachers)
        _require(not bool(((counts < 0) | (counts > k)).any()), f"teacher_counts must be in [0, k={k}]")
        padding = torch.arange(k, device=device) >= counts[..., None]
        t_logits = t_logits.masked_fill(padding, float("-inf"))
    valid = torch.isfinite(t_logits)

    ids = teacher_ids.reshape(n, n_teachers, k)
    bad = valid & ((ids < 0) | (ids >= vocab))
    if bool(bad.any()):
        raise ValueError(f"teacher_ids out of range [0, V={vocab}): e.g. {int(ids[bad][0])} at a valid entry")
    ids = torch.where(valid, ids, torch.zeros_like(ids)).to(torch.int32)

    if labels is None:
        flat_labels = torch.full((n,), ignore_index, dtype=torch.int64, device=device)
    else:
        _check_tensor("labels", labels, INT_DTYPES, "an integer tensor")
        _check_device("labels", labels, device)
        _check_shape("labels", labels, lead, "logits.shape[:-1]")
        flat_labels = labels.reshape(n).to(torch.int64)
        used = flat_labels != ignore_index
        if bool((used & ((flat_labels < 0) | (flat_labels >= vocab))).any()):
            raise ValueError(f"labels out of range [0, V={vocab}) (and not ignore_index={ignore_index})")

    return FlatInputs(lead_shape=lead, logits=logits.reshape(n, vocab).contiguous(), labels=flat_labels,
                      teacher_ids=ids.contiguous(), teacher_logits=t_logits.contiguous(),
                      present=valid.any(-1))


def flatten_mask(name, mask, lead_shape, device):
    """[...] bool or 0/1 integer mask -> [N] bool."""
    _check_tensor(name, mask, (torch.bool, *INT_DTYPES), "a bool or integer 0/1 tensor")
    _check_device(name, mask, device)
    _check_shape(name, mask, lead_shape, "logits.shape[:-1]")
    return mask.reshape(-1) != 0


def check_no_nan(name, value):
    if value is not None and bool(torch.isnan(value).any()):
        raise ValueError(f"{name} contains NaN")
