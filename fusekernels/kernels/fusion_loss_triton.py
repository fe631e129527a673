"""Triton kernel of the fused sparse top-k fusion loss (row-level backend contract).

One program handles one row n of the student logits z [N, V]:

1. Teacher side, in registers: the T*k (<= 128) teacher entries are softmaxed per teacher with the
   temperature, weighted, and duplicate ids are merged by pairwise comparison, giving for every
   distinct id its target mass q, plus m = sum q and sum q log q (for "kl"). The student logits at
   those ids and at the label are gathered once.
2. Pass 1 over V in BLOCK_V chunks: online logsumexp in fp32 (one exp per element).
3. Loss: clm = lse - z[y]; ce_fus = sum_e p_e (lse - z[id_e]) (each term >= 0: no cancellation
   between m*lse and sum q z); kl adds sum q log q.
4. Pass 2 (backward, optional), chunks in reverse order so that the re-read starts with the
   chunks most likely still in L2: grad = (clm_scale*[y valid] + fusion_scale*m) * exp(z - lse)
   written densely in the logits dtype (possibly over the logits themselves), then after a block
   barrier a sparse fix-up overwrites the label and the distinct teacher ids with their exact
   value computed from the gathered logits (so it never re-reads an overwritten logit).

Memory traffic: logits read twice, gradient written once; the teacher data is O(T*k) per row.
Rows whose two scales are 0 skip both passes' reads and get loss 0 and an all-zero gradient;
rows whose logits are all -inf (no distribution) get the same.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._runtime import FLOAT_LOGIT_DTYPES, check_launch_device, next_power_of_2, require_tensor

MAX_TEACHER_ENTRIES = 128  # T * k: the duplicate merge compares all entry pairs in registers
LOSS_TYPES = ("kl", "ce")


@triton.jit
def _fusion_loss_rows_kernel(
    logits_ptr, grad_ptr, labels_ptr, teacher_ids_ptr, teacher_logits_ptr, teacher_weights_ptr,
    clm_scale_ptr, fusion_scale_ptr, loss_ptr,
    V, T, K, ignore_index, temperature,
    IS_KL: tl.constexpr, COMPUTE_GRAD: tl.constexpr, PROBS_GIVEN: tl.constexpr,
    BLOCK_V: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_T: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    z_row = logits_ptr + row * V
    neg_inf = float("-inf")

    # ---- per-row scalars; an invalid label simply has no CLM term --------------------------
    label = tl.load(labels_ptr + row)
    label_ok = (label != ignore_index) & (label >= 0) & (label < V)
    clm_scale = tl.where(label_ok, tl.load(clm_scale_ptr + row), 0.0)
    fusion_scale = tl.load(fusion_scale_ptr + row)
    active = (clm_scale != 0.0) | (fusion_scale != 0.0)

    # ---- teacher entries: weighted per-teacher softmax ---------------------------------------
    n_entries = T * K
    e = tl.arange(0, BLOCK_E)
    e_in = e < n_entries
    t_logit = tl.load(teacher_logits_ptr + row * n_entries + e, mask=e_in, other=neg_inf)
    ids = tl.load(teacher_ids_ptr + row * n_entries + e, mask=e_in, other=0)
    # Out-of-range ids are dropped (never dereferenced); the functional layer rejects them.
    # (scalar conditions enter block masks through tl.where: the CPU interpreter mistypes a
    # splatted scalar comparison, so `block & scalar_bool` fails there)
    valid = tl.where(active, e_in & (t_logit > neg_inf) & (ids >= 0) & (ids < V), False)
    teacher_of = e // K
    member = (teacher_of[:, None] == tl.arange(0, BLOCK_T)[None, :]) & valid[:, None]  # [E, T]
    t_max = tl.max(tl.where(member, t_logit[:, None], neg_inf), axis=0)                # [T]
    e_max = tl.max(tl.where(member, t_max[None, :], neg_inf), axis=1)                  # [E]
    # The max is subtracted BEFORE dividing by the temperature: logits / T overflows to inf
    # for tiny T (inf - inf = NaN), (logit - max) / T <= 0 never does. The maximum itself
    # gives exactly 0 even if T flushes to 0 (no 0 / 0).
    diff = t_logit - tl.where(valid, e_max, 0.0)
    scaled = tl.where(diff == 0.0, 0.0, diff / temperature)
    expd = tl.where(valid, tl.exp(scaled), 0.0)
    t_sum = tl.sum(tl.where(member, expd[:, None], 0.0), axis=0)                       # [T]
    e_sum = tl.sum(tl.where(member, t_sum[None, :], 0.0), axis=1)                      # [E]
    weight = tl.load(teacher_weights_ptr + row * T + teacher_of, mask=valid, other=0.0)
    if PROBS_GIVEN:  # the entries are target probabilities already (precision="published")
        prob = tl.where(valid, weight * t_logit, 0.0)
    else:
        prob = tl.where(valid, weight * expd / tl.where(valid, e_sum, 1.0), 0.0)

    # ---- duplicate ids: q per distinct id, kept on the first entry carrying it ---------------
    same = (ids[:, None] == ids[None, :]) & valid[:, None] & valid[None, :]           # [E, E]
    q_at = tl.sum(tl.where(same, prob[None, :], 0.0), axis=1)
    n_before = tl.sum((same & (e[None, :] < e[:, None])).to(tl.int32), axis=1)
    first = valid & (n_before == 0) & (q_at > 0.0)
    mass = tl.sum(prob, axis=0)
    q_label = tl.sum(tl.where(valid & (ids == label), prob, 0.0), axis=0)

    # Gathered before pass 2 may overwrite the logits in place.
    z_ids = tl.load(z_row + ids, mask=valid, other=0.0).to(tl.float32)
    z_label = tl.load(z_row + label, mask=label_ok & active, other=0.0).to(tl.float32)

    # ---- pass 1: online logsumexp ------------------------------------------------------------
    offs = tl.arange(0, BLOCK_V)
    run_max = neg_inf
    run_sum = 0.0
    v_end = tl.where(active, V, 0)  # inactive rows read nothing
    for start in range(0, v_end, BLOCK_V):
        idx = start + offs
        z = tl.load(z_row + idx, mask=idx < V, other=neg_inf).to(tl.float32)
        new_max = tl.maximum(run_max, tl.max(z, axis=0))
        shift = tl.where(new_max == neg_inf, 0.0, new_max)  # all -inf so far: keep exp(-inf) = 0
        run_sum = run_sum * tl.exp(run_max - shift) + tl.sum(tl.exp(z - shift), axis=0)
        run_max = new_max
    # A row whose logits are all -inf has no distribution: like a padding row it gets loss 0 and
    # gradient 0. Inactive rows get a dummy finite lse; everything derived from it is masked out.
    # NaN / +inf logits must surface as a NaN loss (as in torch), so only -inf counts as empty.
    active = active & (run_max != neg_inf)
    lse = tl.where(active, run_max + tl.log(tl.where(run_sum == 0.0, 1.0, run_sum)), 0.0)

    # ---- loss ----------------------------------------------------------------------------------
    clm = lse - z_label
    fus = tl.sum(tl.where(prob > 0.0, prob * (lse - z_ids), 0.0), axis=0)
    if IS_KL:
        fus += tl.sum(tl.where(first, q_at * tl.log(tl.where(first, q_at, 1.0)), 0.0), axis=0)
    # A zero scale drops its term even where the term is inf (0 * inf would be NaN).
    loss = (tl.where(clm_scale != 0.0, clm_scale * clm, 0.0)
            + tl.where(fusion_scale != 0.0, fusion_scale * fus, 0.0))
    tl.store(loss_ptr + row, tl.where(active, loss, 0.0))

    if COMPUTE_GRAD:
        g_row = grad_ptr + row * V
        coef = clm_scale + fusion_scale * mass
        # Exact values at the sparse positions, from logits gathered before any overwrite.
        g_ids = coef * tl.exp(z_ids - lse) - fusion_scale * q_at - tl.where(ids == label, clm_scale, 0.0)
        g_label = coef * tl.exp(z_label - lse) - clm_scale - fusion_scale * q_label
        fix_ids = tl.where(active, first, False)
        # A label that is also a target id is written by the id fix-up alone (one deterministic writer).
        label_not_target = tl.sum((fix_ids & (ids == label)).to(tl.int32), axis=0) == 0
        fix_label = label_ok & active & (clm_scale != 0.0) & label_not_target
        # ---- pass 2: dense softmax part ------------------------------------------------------
        # Last chunk first: the chunks pass 1 read most recently are the likeliest still in L2.
        n_chunks = tl.cdiv(V, BLOCK_V)
        for step in range(0, n_chunks):
            idx = (n_chunks - 1 - step) * BLOCK_V + offs
            in_row = idx < V
            z = tl.load(z_row + idx, mask=tl.where(active, in_row, False), other=neg_inf).to(tl.float32)
            g = tl.where(active, coef * tl.exp(z - lse), 0.0)
            tl.store(g_row + idx, g.to(grad_ptr.dtype.element_ty), mask=in_row)
        # The fix-up stores must land after the dense stores of other threads of this program.
        tl.debug_barrier()
        tl.store(g_row + ids, g_ids.to(grad_ptr.dtype.element_ty), mask=fix_ids)
        tl.store(g_row + label, g_label.to(grad_ptr.dtype.element_ty), mask=fix_label)


def default_launch_config(vocab_size: int, logits_dtype: torch.dtype) -> tuple[int, int]:
    """(BLOCK_V, num_warps) for one row program: chunks of 16-32 KiB of logits, 8 warps.

    Memory-bound streaming: a chunk large enough for 16-byte vector loads on every thread, small
    enough to keep several programs resident per SM. Untuned on hardware (see the GPU benchmark,
    which sweeps alternatives).
    """
    cap = 8192 if logits_dtype != torch.float32 else 4096
    block_v = min(next_power_of_2(vocab_size), cap)
    num_warps = 8 if block_v >= 4096 else 4
    return block_v, num_warps


def fusion_loss_rows_triton(logits, labels, teacher_ids, teacher_logits, teacher_weights, clm_scale,
                            fusion_scale, *, temperature: float, loss_type: str, ignore_index: int,
                            compute_grad: bool, grad_inplace: bool, probs_given: bool = False):
    """Fused sparse fusion loss per row (Triton). See the module docstring for the math.

    logits [N, V] contiguous fp32/bf16/fp16 (may contain -inf); labels [N] int64 (ignore_index =
    no CLM term); teacher_ids [N, T, k] int32/int64 in [0, V) (ids of -inf entries are ignored);
    teacher_logits [N, T, k] float32 (-inf = padding, temperature not applied); teacher_weights
    [N, T] float32; clm_scale, fusion_scale [N] float32. All on the logits' device.

    Returns (row_loss [N] float32 already scaled, grad [N, V] in logits.dtype or None). With
    ``grad_inplace`` the gradient overwrites ``logits`` and ``logits`` itself is returned.
    ``probs_given``: teacher_logits hold target probabilities (-inf = padding), not logits.
    """
    return launch_fusion_loss_rows(
        logits, labels, teacher_ids, teacher_logits, teacher_weights, clm_scale, fusion_scale,
        temperature=temperature, loss_type=loss_type, ignore_index=ignore_index,
        compute_grad=compute_grad, grad_inplace=grad_inplace, probs_given=probs_given)


def launch_fusion_loss_rows(logits, labels, teacher_ids, teacher_logits, teacher_weights, clm_scale,
                            fusion_scale, *, temperature: float, loss_type: str, ignore_index: int,
                            compute_grad: bool, grad_inplace: bool, block_v: int | None = None,
                            num_warps: int | None = None, probs_given: bool = False):
    """``fusion_loss_rows_triton`` with an explicit launch configuration (tests, tuning).

    block_v: power of two, logits chunk per loop iteration; num_warps: warps per row program.
    ``None`` uses ``default_launch_config``.
    """
    require_tensor("logits", logits, ndim=2, dtypes=FLOAT_LOGIT_DTYPES)
    n_rows, vocab = logits.shape
    device = logits.device
    if vocab == 0:
        raise ValueError("logits must have a non-empty vocabulary dimension")
    require_tensor("labels", labels, ndim=1, dtypes=(torch.int64,), device=device, shape=(n_rows,))
    require_tensor("teacher_ids", teacher_ids, ndim=3, dtypes=(torch.int32, torch.int64), device=device,
                   shape=(n_rows, None, None))
    n_teachers, top_k = teacher_ids.shape[1:]
    require_tensor("teacher_logits", teacher_logits, ndim=3, dtypes=(torch.float32,), device=device,
                   shape=(n_rows, n_teachers, top_k))
    require_tensor("teacher_weights", teacher_weights, ndim=2, dtypes=(torch.float32,), device=device,
                   shape=(n_rows, n_teachers))
    require_tensor("clm_scale", clm_scale, ndim=1, dtypes=(torch.float32,), device=device, shape=(n_rows,))
    require_tensor("fusion_scale", fusion_scale, ndim=1, dtypes=(torch.float32,), device=device, shape=(n_rows,))
    if n_teachers * top_k > MAX_TEACHER_ENTRIES:
        raise ValueError(f"teacher_ids: T * k must be <= {MAX_TEACHER_ENTRIES}, got {n_teachers} * {top_k}")
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    temperature = float(temperature)
    if not (temperature > 0.0 and temperature != float("inf")):
        raise ValueError(f"temperature must be a positive finite number, got {temperature}")
    if grad_inplace and not compute_grad:
        raise ValueError("grad_inplace=True needs compute_grad=True")
    check_launch_device(_fusion_loss_rows_kernel, device, __name__)

    row_loss = torch.empty(n_rows, dtype=torch.float32, device=device)
    grad = None
    if compute_grad:
        grad = logits if grad_inplace else torch.empty_like(logits)
    if n_rows == 0:
        return row_loss, grad
    default_block, default_warps = default_launch_config(vocab, logits.dtype)
    block_v = default_block if block_v is None else int(block_v)
    if block_v <= 0 or block_v & (block_v - 1):
        raise ValueError(f"block_v must be a positive power of two, got {block_v}")
    _fusion_loss_rows_kernel[(n_rows,)](
        logits, grad if grad is not None else logits, labels, teacher_ids, teacher_logits,
        teacher_weights, clm_scale, fusion_scale, row_loss,
        vocab, n_teachers if n_teachers * top_k else 0, max(top_k, 1), int(ignore_index), temperature,
        IS_KL=loss_type == "kl", COMPUTE_GRAD=bool(compute_grad), PROBS_GIVEN=bool(probs_given),
        BLOCK_V=block_v, BLOCK_E=next_power_of_2(n_teachers * top_k), BLOCK_T=next_power_of_2(n_teachers),
        num_warps=default_warps if num_warps is None else int(num_warps),
    )
    return row_loss, grad
