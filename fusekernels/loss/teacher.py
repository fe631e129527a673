"""Teacher-side extraction: top-k logits, logsumexp and token CE in one pass over the logits.

This replaces the published recipe's fp16 cast + full log_softmax + topk: values stay in fp32 and
the logits are read once per row chunk.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from .backend import teacher_topk_rows
from .inputs import INT_DTYPES, LOGIT_DTYPES
from .registry import BACKENDS, PRECISIONS


class TeacherTopK(NamedTuple):
    """ids [..., k] int32, values [..., k] float32 sorted descending, lse [...] float32 (logsumexp
    of the row), ce [...] float32 (lse - z[label]; 0 where the label is ignored or absent)."""

    ids: torch.Tensor
    values: torch.Tensor
    lse: torch.Tensor
    ce: torch.Tensor


def teacher_topk(logits: torch.Tensor, labels: Optional[torch.Tensor] = None, k: int = 10, *,
                 ignore_index: int = -100, backend: str = "auto", precision: str = "fp32") -> TeacherTopK:
    """Top-k (id, logit) pairs, logsumexp and next-token CE of every row of teacher logits.

    logits [..., V] fp32/bf16/fp16; labels [...] int next-token labels (already shifted) or None;
    k in [1, V]. Ties within the top-k may come in any order. ``precision="fp32"`` (default):
    logits are not rounded to fp16. ``precision="published"``: as the published extraction,
    the logits are cast to fp16 first (top-k and lse of the fp16 values) and the CE is rounded
    to fp16 (values stay float32 tensors holding fp16 values).
    A row with fewer than k finite logits gets -inf values in its last entries, with distinct ids
    (on every backend). Raises ValueError when a row holds NaN (its top-k would be meaningless).
    """
    PRECISIONS.check(precision)
    if not isinstance(logits, torch.Tensor) or logits.dtype not in LOGIT_DTYPES:
        raise TypeError("logits must be a float32/bfloat16/float16/float64 tensor")
    if logits.dim() < 1 or logits.shape[-1] == 0:
        raise ValueError(f"logits must have shape [..., V] with V > 0, got {tuple(logits.shape)}")
    BACKENDS.check(backend)
    lead, vocab = logits.shape[:-1], logits.shape[-1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= vocab:
        raise ValueError(f"k must be an int in [1, V={vocab}], got {k!r}")
    flat_labels = None
    if labels is not None:
        if not isinstance(labels, torch.Tensor) or labels.dtype not in INT_DTYPES:
            raise TypeError("labels must be an integer tensor")
        if tuple(labels.shape) != tuple(lead):
            raise ValueError(f"labels must have shape {tuple(lead)} (logits.shape[:-1]), got {tuple(labels.shape)}")
        if labels.device != logits.device:
            raise ValueError(f"labels is on {labels.device} but logits are on {logits.device}")
        flat_labels = labels.reshape(-1).to(torch.int64)
        used = flat_labels != ignore_index
        if bool((used & ((flat_labels < 0) | (flat_labels >= vocab))).any()):
            raise ValueError(f"labels out of range [0, V={vocab}) (and not ignore_index={ignore_index})")
    if logits.dtype == torch.float64 and backend == "auto":
        backend = "torch"  # the kernel takes fp32/bf16/fp16 only
    rows = logits.reshape(-1, vocab).contiguous()
    if precision == "published":
        rows = rows.to(torch.float16)  # logits.to(torch.float16) before top-k and cross-entropy
    ids, values, lse, ce = teacher_topk_rows(rows, flat_labels, k, ignore_index, backend=backend)
    nan_rows = torch.isnan(lse) | torch.isnan(values).any(-1)  # [N]: cheap next to the pass over [N, V]
    if bool(nan_rows.any()):
        first = int(nan_rows.nonzero()[0, 0])
        raise ValueError(f"logits contain NaN in {int(nan_rows.sum())} of {rows.shape[0]} rows (first: flat row "
                         f"{first}); the model produced NaN (overflow in fp16?)")
    if precision == "published":
        ce = ce.to(torch.float16).float()  # F.cross_entropy of fp16 logits returns fp16
    return TeacherTopK(ids.reshape(*lead, k), values.reshape(*lead, k), lse.reshape(lead), ce.reshape(lead))


def sequence_ce(token_ce: torch.Tensor, mask: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """Per-sequence ``metric_ce`` (how FuseLLM ranks teachers): mean token CE over the masked positions.

    token_ce [B, L] float, mask [B, L] bool/0-1 -> [B] float32 (0 for a sequence with no position).
    ``precision="published"``: the published fp16 arithmetic, ``(ce16 * mask).sum(-1) / count``
    with fp16 token CEs (torch's CPU fp16 sum and division); the result holds fp16 values.
    """
    if token_ce.shape != mask.shape or token_ce.dim() != 2:
        raise ValueError(f"token_ce and mask must both have shape [B, L], got {tuple(token_ce.shape)} "
                         f"and {tuple(mask.shape)}")
    if precision == "published":
        ce16 = token_ce.detach().cpu().to(torch.float16)
        m = (mask != 0).cpu().to(torch.int64)
        return ((ce16 * m).sum(dim=-1) / m.sum(dim=-1)).float().nan_to_num(0.0).to(token_ce.device)
    if precision != "fp32":
        raise ValueError(f"precision must be 'fp32' or 'published', got {precision!r}")
    weight = (mask != 0).to(torch.float32)
    count = weight.sum(-1)
    return (token_ce.float() * weight).sum(-1) / count.clamp_min(1.0)
