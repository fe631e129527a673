"""Triton kernel of the teacher-side contract: top-k, logsumexp and label CE in one pass.

One program per row streams the logits z [V] in BLOCK_V chunks and keeps, in registers,

- an online logsumexp (running max and rescaled sum, fp32, one exp per element);
- a k-slot buffer (k <= 128) of the best (value, id) pairs seen so far and its minimum ``thr``.
  A chunk whose maximum does not beat ``thr`` costs nothing more; otherwise its candidates
  above ``thr`` are inserted one by one (argmax of the chunk replaces the buffer's minimum) until
  none is left. For a randomly ordered row the expected number of insertions is about
  k * (1 + ln(V / k)), so almost every chunk takes the cheap path.

At the end the buffer is sorted by a pairwise rank (value descending, ties by slot) and
scattered to the outputs; ce = lse - z[label] for valid labels. Values are the raw logits in fp32
(no fp16 cast, unlike the original preprocessing). Rows with fewer than k finite logits return
-inf values for the missing entries; the kernel's ids there are placeholders that may repeat a
real id, so the wrapper recomputes such (rare) rows with ``torch.topk``, which gives distinct ids.
"""
from __future__ import annotations

import operator

import torch
import triton
import triton.language as tl

from ._runtime import FLOAT_LOGIT_DTYPES, check_launch_device, next_power_of_2, require_tensor

MAX_TOP_K = 128  # the buffer and the final pairwise sort live in registers


@triton.jit
def _teacher_topk_rows_kernel(
    logits_ptr, labels_ptr, ids_out_ptr, values_out_ptr, lse_out_ptr, ce_out_ptr,
    V, K, ignore_index,
    HAS_LABELS: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    z_row = logits_ptr + row * V
    neg_inf = float("-inf")
    pos_inf = float("inf")

    slot = tl.arange(0, BLOCK_K)
    slot_ok = slot < K
    # Unused slots hold +inf so that they are never the minimum picked for replacement.
    best_val = tl.where(slot_ok, neg_inf, pos_inf)
    best_id = slot  # placeholder ids (in range since K <= V) for rows with < K finite logits
    thr = neg_inf

    offs = tl.arange(0, BLOCK_V)
    run_max = neg_inf
    run_sum = 0.0
    for start in range(0, V, BLOCK_V):
        idx = start + offs
        z = tl.load(z_row + idx, mask=idx < V, other=neg_inf).to(tl.float32)
        # The chunk maximum serves both the logsumexp and the first top-k candidate.
        top, top_at = tl.max(z, axis=0, return_indices=True)
        new_max = tl.maximum(run_max, top)
        shift = tl.where(new_max == neg_inf, 0.0, new_max)  # all -inf so far: keep exp(-inf) = 0
        run_sum = run_sum * tl.exp(run_max - shift) + tl.sum(tl.exp(z - shift), axis=0)
        run_max = new_max

        cand = z
        while top > thr:
            victim = tl.argmin(best_val, axis=0)
            best_val = tl.where(slot == victim, top, best_val)
            best_id = tl.where(slot == victim, (start + top_at).to(tl.int32), best_id)
            thr = tl.min(best_val, axis=0)
            cand = tl.where(offs == top_at, neg_inf, cand)
            top, top_at = tl.max(cand, axis=0, return_indices=True)

    lse = run_max + tl.log(tl.where(run_sum > 0.0, run_sum, 1.0))  # all -inf row: lse = -inf
    tl.store(lse_out_ptr + row, lse)
    ce = tl.zeros_like(lse)
    if HAS_LABELS:
        label = tl.load(labels_ptr + row)
        label_ok = (label != ignore_index) & (label >= 0) & (label < V)
        z_label = tl.load(z_row + label, mask=label_ok, other=0.0).to(tl.float32)
        ce = tl.where(label_ok, lse - z_label, 0.0)
    tl.store(ce_out_ptr + row, ce)

    # Rank = number of slots ordered before this one (larger value, or equal value and lower slot).
    ahead = (best_val[None, :] > best_val[:, None]) | (
        (best_val[None, :] == best_val[:, None]) & (slot[None, :] < slot[:, None]))
    rank = tl.sum((ahead & slot_ok[None, :]).to(tl.int32), axis=1)
    tl.store(ids_out_ptr + row * K + rank, best_id, mask=slot_ok)
    tl.store(values_out_ptr + row * K + rank, best_val, mask=slot_ok)


def default_launch_config(vocab_size: int) -> tuple[int, int]:
    """(BLOCK_V, num_warps): 4096-element chunks, 8 warps (untuned on hardware)."""
    block_v = min(next_power_of_2(vocab_size), 4096)
    return block_v, (8 if block_v >= 4096 else 4)


def teacher_topk_rows_triton(logits, labels, k: int, ignore_index: int = -100):
    """Top-k, logsumexp and label cross-entropy of every row, in one pass over the logits.

    logits [N, V] contiguous fp32/bf16/fp16; labels [N] int64 or None (then ce = 0); 1 <= k <= V.
    Returns (ids int32 [N, k], values float32 [N, k] sorted descending, lse float32 [N],
    ce float32 [N] = lse - z[label], 0 for ignored rows). Equal values may come in any order.
    """
    return launch_teacher_topk_rows(logits, labels, k, ignore_index)


def launch_teacher_topk_rows(logits, labels, k: int, ignore_index: int = -100, *,
                             block_v: int | None = None, num_warps: int | None = None):
    """``teacher_topk_rows_triton`` with an explicit launch configuration (tests, tuning)."""
    require_tensor("logits", logits, ndim=2, dtypes=FLOAT_LOGIT_DTYPES)
    n_rows, vocab = logits.shape
    device = logits.device
    if labels is not None:
        require_tensor("labels", labels, ndim=1, dtypes=(torch.int64,), device=device, shape=(n_rows,))
    if isinstance(k, bool) or not hasattr(k, "__index__"):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    k = operator.index(k)
    if not 1 <= k <= min(vocab, MAX_TOP_K):
        raise ValueError(f"k must be in [1, min(V, {MAX_TOP_K})] with V = {vocab}, got {k}")
    check_launch_device(_teacher_topk_rows_kernel, device, __name__)

    ids = torch.empty(n_rows, k, dtype=torch.int32, device=device)
    values = torch.empty(n_rows, k, dtype=torch.float32, device=device)
    lse = torch.empty(n_rows, dtype=torch.float32, device=device)
    ce = torch.empty(n_rows, dtype=torch.float32, device=device)
    if n_rows == 0:
        return ids, values, lse, ce
    default_block, default_warps = default_launch_config(vocab)
    block_v = default_block if block_v is None else int(block_v)
    if block_v <= 0 or block_v & (block_v - 1):
        raise ValueError(f"block_v must be a positive power of two, got {block_v}")
    _teacher_topk_rows_kernel[(n_rows,)](
        logits, labels if labels is not None else lse, ids, values, lse, ce,
        vocab, k, int(ignore_index),
        HAS_LABELS=labels is not None, BLOCK_V=block_v, BLOCK_K=next_power_of_2(k),
        num_warps=default_warps if num_warps is None else int(num_warps),
    )
    short = values[:, -1] == float("-inf")  # rows with fewer than k finite logits
    if bool(short.any()):
        rows = short.nonzero()[:, 0]
        top = torch.topk(logits[rows].float(), k, dim=-1)
        ids[rows], values[rows] = top.indices.to(torch.int32), top.values
    return ids, values, lse, ce
