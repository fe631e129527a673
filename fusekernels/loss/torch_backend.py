"""Pure-torch implementation of the fusion-loss backend contract (CPU and any device).

Why it is fast: the fused target has at most ``T * k`` non-zero entries per row, so it is never
materialised. Per row only the student's softmax is dense; the target enters the loss through a
gather of ``T * k`` logits and the gradient through a scatter of ``T * k`` values. The gradient is
produced in the forward (as fused cross-entropy kernels do), so the softmax is computed once, in
row chunks whose fp32 working buffer stays bounded, and written straight into the gradient
buffer (or over the logits themselves with ``grad_inplace``). float64 logits run in float64
(for gradcheck); every other dtype accumulates in float32.
"""
from __future__ import annotations

import torch

# Rows per chunk are chosen so that one [chunk, V] fp32 buffer stays near this size.
CHUNK_BYTES = 128 * 2**20


def _tiny(t: torch.Tensor) -> float:
    return torch.finfo(t.dtype).tiny


def rows_per_chunk(vocab_size: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Rows per chunk such that a [rows, vocab_size] fp32 buffer is about ``chunk_bytes``."""
    return max(1, chunk_bytes // (4 * max(1, vocab_size)))


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 stays float64 (gradcheck), everything else runs in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def teacher_probabilities(teacher_logits: torch.Tensor, teacher_weights: torch.Tensor,
                          temperature: float, dtype: torch.dtype = torch.float32,
                          probs_given: bool = False) -> torch.Tensor:
    """Weighted per-teacher softmax ``w_t * softmax(l_t / temperature)`` over the valid entries.

    teacher_logits [N, T, k] float (-inf = padding), teacher_weights [N, T] float
    -> [N, T, k] in ``dtype``, 0 at padding entries and for teachers without a valid entry.
    ``probs_given``: teacher_logits already hold probabilities (``w_t * p`` is returned as is).
    """
    teacher_weights = teacher_weights.to(dtype)
    if probs_given:
        given = teacher_logits.to(dtype)
        given = torch.where(given > float("-inf"), given, torch.zeros_like(given))
        return given * teacher_weights.unsqueeze(-1)
    logits = teacher_logits.to(dtype)
    top = logits.amax(dim=-1, keepdim=True)
    # A teacher with only padding has max -inf; subtracting 0 keeps exp(-inf) = 0 instead of NaN.
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    # Max subtracted before the division: logits / T overflows for tiny T, (logit - max) / T <= 0
    # does not; the maximum gives exactly 0 (no 0 / 0 if T underflows in the working dtype).
    diff = logits - top
    expd = torch.exp(torch.where(diff == 0, torch.zeros_like(diff), diff / temperature))
    total = expd.sum(dim=-1, keepdim=True)
    norm = torch.where(total > 0, teacher_weights.unsqueeze(-1) / total.clamp_min(_tiny(total)),
                       torch.zeros_like(total))
    return expd * norm


def merged_entropy_term(ids: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """``sum_v q(v) log q(v)`` for sparse entries whose ids may repeat.

    ids [N, E] int, probs [N, E] float32 (q is the sum of probs per distinct id) -> [N] float32.
    Duplicates are merged first (sort + segment sum) because log is not additive.
    """
    sorted_ids, order = torch.sort(ids, dim=-1)
    sorted_probs = probs.gather(1, order)
    starts = torch.ones_like(sorted_ids, dtype=torch.bool)
    starts[:, 1:] = sorted_ids[:, 1:] != sorted_ids[:, :-1]
    segment = torch.cumsum(starts, dim=-1) - 1
    merged = torch.zeros_like(sorted_probs).scatter_add_(1, segment, sorted_probs)
    return torch.where(merged > 0, merged * torch.log(merged.clamp_min(_tiny(merged))),
                       torch.zeros_like(merged)).sum(-1)


def _softmax_into(z: torch.Tensor, buf: torch.Tensor) -> None:
    """buf = softmax(z, -1), in place when buf is z (the CPU kernel reads each element before it
    writes it; elsewhere the aliasing case goes through a temporary)."""
    if buf.data_ptr() != z.data_ptr():
        torch.ops.aten._softmax.out(z, -1, False, out=buf)
    elif z.device.type == "cpu":
        torch.ops.aten._softmax.out(z, -1, False, out=z)
    else:
        buf.copy_(torch.softmax(z, dim=-1))


def softmax_and_lse(z: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
    """buf = softmax(z) (0 for all -inf rows); returns lse = logsumexp(z) [c] (-inf for those).

    On CPU the fused softmax kernel is several times faster than torch.logsumexp, and
    p(argmax) = 1 / sum exp(z - max) gives lse = max - log p(argmax) to fp32 rounding.
    """
    top = z.amax(dim=-1)
    _softmax_into(z, buf)
    empty = top == float("-inf")  # NaN / +inf rows are not empty: they must give a NaN loss
    if bool(empty.any()):  # all -inf rows: softmax gives NaN; they have no distribution at all
        buf[empty] = 0
    return torch.where(empty, top, top - torch.log(buf.amax(dim=-1)))


def _chunk_rows(z, buf, labels, ids, probs, clm_scale, fusion_scale, *, loss_type, ignore_index,
                compute_grad):
    """One row chunk. z [c, V] float32; buf [c, V] float32 scratch (may alias z) that receives
    the gradient when ``compute_grad``. Returns (clm [c], fusion [c]) unscaled float32 terms."""
    valid_label = labels != ignore_index
    safe_labels = torch.where(valid_label, labels, torch.zeros_like(labels))
    # Everything the loss needs from z is read before ``buf`` (possibly z itself) is overwritten.
    z_label = z.gather(1, safe_labels[:, None])[:, 0]
    z_teacher = z.gather(1, ids)
    lse = softmax_and_lse(z, buf)

    # A row whose logits are all -inf has no distribution: it contributes no loss and no
    # gradient (the same convention as the Triton kernel), never NaN.
    alive = lse != float("-inf")
    valid_label = valid_label & alive
    probs = torch.where(alive[:, None], probs, torch.zeros_like(probs))
    mass = probs.sum(-1)
    clm = torch.where(valid_label, lse - z_label, torch.zeros_like(lse))
    # sum_v q(v) (lse - z(v)) over the sparse entries: no cancellation, and 0 * -inf never formed.
    fusion = torch.where(probs > 0, probs * (lse[:, None] - z_teacher), torch.zeros_like(probs)).sum(-1)
    if loss_type == "kl":
        fusion = fusion + merged_entropy_term(ids, probs)

    if compute_grad:
        buf.mul_((clm_scale * valid_label + fusion_scale * mass)[:, None])
        buf.scatter_add_(1, safe_labels[:, None], -(clm_scale * valid_label)[:, None])
        buf.scatter_add_(1, ids, -(fusion_scale[:, None] * probs))
    return clm, fusion


@torch.no_grad()
def fusion_loss_terms_torch(logits, labels, teacher_ids, teacher_logits, teacher_weights, clm_scale,
                            fusion_scale, *, temperature, loss_type, ignore_index, compute_grad,
                            grad_inplace, chunk_bytes=CHUNK_BYTES, probs_given=False):
    """Backend contract plus the unscaled per-row terms (see ``fusion_loss_rows_torch``).

    Returns (row_loss [N] f32, grad [N, V] logits.dtype or None, clm [N] f32, fusion [N] f32) where
    ``clm`` / ``fusion`` are the unscaled CE(z, y) and KL/CE(q, z) of each row (0 where undefined).
    """
    n, vocab = logits.shape
    ids = teacher_ids.reshape(n, teacher_ids.shape[1] * teacher_ids.shape[2]).long()
    work = work_dtype(logits.dtype)
    probs = teacher_probabilities(teacher_logits, teacher_weights, temperature, work,
                                  probs_given).reshape(ids.shape)
    clm_scale, fusion_scale = clm_scale.to(work), fusion_scale.to(work)
    grad = None
    if compute_grad:
        grad = logits if grad_inplace else torch.empty_like(logits)
    clm = torch.empty(n, dtype=work, device=logits.device)
    fusion = torch.empty_like(clm)
    step = rows_per_chunk(vocab, chunk_bytes)
    native = logits.dtype == work  # fp32 (or fp64) logits need no conversion copy
    scratch = None
    if native and not compute_grad:
        scratch = torch.empty(min(step, n), vocab, dtype=work, device=logits.device)
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        z = logits[lo:hi].to(work)  # a view for fp32 logits, a fresh fp32 copy otherwise
        # Where the softmax and then the gradient go: the gradient rows themselves (which are the
        # logits when in place), else the fp32 copy of a bf16/fp16 chunk, which is free to reuse.
        buf = (grad[lo:hi] if compute_grad else scratch[: hi - lo]) if native else z
        clm[lo:hi], fusion[lo:hi] = _chunk_rows(
            z, buf, labels[lo:hi], ids[lo:hi], probs[lo:hi], clm_scale[lo:hi], fusion_scale[lo:hi],
            loss_type=loss_type, ignore_index=ignore_index, compute_grad=compute_grad)
        if compute_grad and not native:
            grad[lo:hi].copy_(buf)
    row_loss = (torch.where(clm_scale != 0, clm_scale * clm, torch.zeros_like(clm))
                + torch.where(fusion_scale != 0, fusion_scale * fusion, torch.zeros_like(fusion)))
    return row_loss, grad, clm, fusion


def fusion_loss_rows_torch(logits, labels, teacher_ids, teacher_logits, teacher_weights, clm_scale,
                           fusion_scale, *, temperature, loss_type, ignore_index, compute_grad,
                           grad_inplace, probs_given=False):
    """Fusion-loss backend contract in torch.

    logits [N, V] fp32/bf16/fp16 contiguous; labels [N] int64; teacher_ids [N, T, k] int32 in
    [0, V); teacher_logits [N, T, k] float32 (-inf = padding, temperature not applied);
    teacher_weights [N, T] float32; clm_scale, fusion_scale [N] float32.
    Returns (row_loss [N] float32, already scaled; grad [N, V] in logits.dtype or None). With
    ``grad_inplace`` the gradient is written into ``logits`` and ``logits`` is returned.
    float64 logits (beyond the contract, for gradcheck) give a float64 row_loss.
    ``probs_given``: teacher_logits hold target probabilities (>= 0; -inf = padding) instead of
    logits; the temperature is then not used.
    """
    row_loss, grad, _, _ = fusion_loss_terms_torch(
        logits, labels, teacher_ids, teacher_logits, teacher_weights, clm_scale, fusion_scale,
        temperature=temperature, loss_type=loss_type, ignore_index=ignore_index,
        compute_grad=compute_grad, grad_inplace=grad_inplace, probs_given=probs_given)
    return row_loss, grad


@torch.no_grad()
def teacher_topk_rows_torch(logits, labels, k: int, ignore_index: int = -100,
                            chunk_bytes: int = CHUNK_BYTES):
    """Teacher-side contract in torch: top-k, logsumexp and token CE in one chunked pass.

    logits [N, V] fp32/bf16/fp16, labels [N] int64 or None ->
    (ids int32 [N, k], values float32 [N, k] sorted descending, lse float32 [N], ce float32 [N]);
    ce = lse - z[label], 0 where the label is ignore_index (or labels is None). No fp16 cast.
    """
    n, vocab = logits.shape
    device = logits.device
    ids = torch.empty(n, k, dtype=torch.int32, device=device)
    values = torch.empty(n, k, dtype=torch.float32, device=device)
    lse = torch.empty(n, dtype=torch.float32, device=device)
    ce = torch.zeros(n, dtype=torch.float32, device=device)
    step = rows_per_chunk(vocab, chunk_bytes)
    scratch = torch.empty(min(step, n), vocab, dtype=torch.float32, device=device) \
        if logits.dtype == torch.float32 else None
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        z = logits[lo:hi].float()
        top_values, top_ids = torch.topk(z, k, dim=-1, sorted=True)
        values[lo:hi] = top_values
        ids[lo:hi] = top_ids.to(torch.int32)
        # softmax_and_lse without its two extra passes over [c, V]: the row max is the first top-k
        # value and the largest probability sits at the first top-k id (same values, fewer reads)
        buf = z if logits.dtype != torch.float32 else scratch[: hi - lo]
        _softmax_into(z, buf)
        top = top_values[:, 0]
        p_top = buf.gather(1, top_ids[:, :1])[:, 0]
        lse[lo:hi] = torch.where(top == float("-inf"), top, top - torch.log(p_top))
        if labels is not None:
            lab = labels[lo:hi]
            valid = lab != ignore_index
            z_label = logits[lo:hi].gather(1, torch.where(valid, lab, torch.zeros_like(lab))[:, None])[:, 0].float()
            ce[lo:hi] = torch.where(valid, lse[lo:hi] - z_label, torch.zeros_like(z_label))
    return ids, values, lse, ce
