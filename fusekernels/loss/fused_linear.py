"""Fusion loss straight from hidden states and the LM-head weight, in token chunks.

``fused_linear_fusion_loss(hidden, weight, ...)`` equals ``fusion_loss(hidden @ weight.T + bias,
...)`` (same arguments, same result and gradients) without ever holding the full ``[N, V]``
logits: rows are processed in chunks; per chunk the logits ``h W^T`` are computed, the fusion
backend returns the loss and the logits gradient in one pass (written over the chunk's logits),
and that gradient is immediately folded into ``grad_h = g W`` and ``grad_W += g^T h``. Peak extra
memory is one ``[chunk, V]`` logits buffer plus an fp32 ``[V, H]`` weight-gradient accumulator,
instead of ``[N, V]`` logits, their fp32 softmax and their gradient.

The gradients are computed during the forward and stored (as fused linear cross-entropy kernels
do), so the autograd backward only scales them by the incoming scalar gradient; that is why only
the scalar reductions "mean" and "sum" are offered. Teacher inputs get no gradient.
"""
from __future__ import annotations

import torch

from .functional import alm_plan, fusion_loss
from .registry import LOSS_TYPES

# Rows per chunk are chosen so that one [chunk, V] fp32 buffer stays near this size. Smaller
# chunks save little (the fp32 [V, H] weight-gradient accumulator stays) and cost speed: each
# chunk re-reads W and read-modify-writes that accumulator (on 2 CPU cores, V = 32000, H = 256:
# 262-row chunks ~20% slower than 512-row ones). GPUs need many rows in flight to fill the device.
DEFAULT_CHUNK_BYTES = {"cpu": 64 * 2**20, "cuda": 256 * 2**20}

_ROW_TENSORS = ("labels", "fusion_mask")                       # shape [...]
_TEACHER_ROW_TENSORS = ("teacher_counts", "teacher_ce", "teacher_weights")  # shape [..., T]


def default_chunk_rows(vocab_size: int, device_type: str = "cpu", chunk_bytes: int | None = None) -> int:
    """Rows per chunk so that a [rows, vocab_size] fp32 buffer is about ``chunk_bytes`` (default:
    ``DEFAULT_CHUNK_BYTES`` of the device type, the CUDA value for other accelerators)."""
    if chunk_bytes is None:
        chunk_bytes = DEFAULT_CHUNK_BYTES["cpu" if device_type == "cpu" else "cuda"]
    return max(1, chunk_bytes // (4 * max(1, vocab_size)))


def _flatten_rows(name, tensor, lead_shape, tail_dims):
    """Reshape ``tensor`` [*lead_shape, *tail] to [N, *tail], checking the leading dims."""
    if tensor is None:
        return None
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() != len(lead_shape) + tail_dims or tuple(tensor.shape[:len(lead_shape)]) != tuple(lead_shape):
        raise ValueError(f"{name} must have leading shape {tuple(lead_shape)} (from hidden) and {tail_dims} "
                         f"trailing dim(s), got {tuple(tensor.shape)}")
    return tensor.reshape(-1, *tensor.shape[len(lead_shape):])


def _rows_slice(value, start, end):
    """Rows [start, end) of a row tensor, or of each tensor of a nested (named) tuple."""
    if value is None:
        return None
    if isinstance(value, tuple):
        return type(value)(*(_rows_slice(v, start, end) for v in value)) if hasattr(value, "_fields") else \
            tuple(_rows_slice(v, start, end) for v in value)
    return value[start:end]


def _label_logprobs(hidden, weight, bias, labels, ignore_index, chunk) -> torch.Tensor:
    """[N] log softmax(h W^T + b)[y] per row (0 where y is ignore_index), chunk by chunk, no grad."""
    acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    out = torch.zeros(hidden.shape[0], dtype=acc, device=hidden.device)
    with torch.no_grad():
        for start in range(0, hidden.shape[0], chunk):
            end = min(start + chunk, hidden.shape[0])
            z = hidden[start:end] @ weight.t()
            if bias is not None:
                z = z + bias
            z = z.to(acc)
            y = labels[start:end]
            ok = y != ignore_index
            picked = z.gather(1, torch.where(ok, y, torch.zeros_like(y))[:, None])[:, 0]
            out[start:end] = torch.where(ok, picked - torch.logsumexp(z, -1), torch.zeros_like(picked))
    return out


def _denominator(value, fallback: torch.Tensor) -> torch.Tensor | int:
    """The "mean" denominator every chunk must share: the user's value or the global count."""
    if value is not None:
        return value
    return int(fallback.sum().clamp_min(1))


class _ChunkedLinearFusion(torch.autograd.Function):
    """Autograd wrapper: forward runs all chunks and keeps the gradients, backward scales them."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, run):
        loss, grads = run(hidden, weight, bias, ctx.needs_input_grad[:3])
        ctx.save_for_backward(*[g if g is not None else torch.empty(0) for g in grads])
        ctx.has_grad = tuple(g is not None for g in grads)
        ctx.consumed = False
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        if ctx.consumed:
            raise RuntimeError("fused_linear_fusion_loss: backward already ran once (its gradients were "
                               "computed in the forward and handed over); recompute the loss to backpropagate again")
        ctx.consumed = True
        # The stored gradients are handed over and scaled in place: no second [V, H] buffer.
        unit = grad_output.device.type == "cpu" and float(grad_output) == 1.0
        grads = [(g if unit else g.mul_(grad_output.to(g.dtype))) if has else None
                 for g, has in zip(ctx.saved_tensors, ctx.has_grad)]
        return (*grads, None)


def fused_linear_fusion_loss(
    hidden, weight, labels, teacher_ids, teacher_logits, *, bias=None, teacher_counts=None, teacher_ce=None,
    teacher_weights=None, fusion="mince", loss_type="kl", temperature=1.0, lam=0.9, ignore_index=-100,
    fusion_mask=None, reduction="mean", num_items_in_batch=None, num_fusion_items=None, backend="auto",
    return_components=False, chunk_rows=None, precision="fp32", base_teacher=True, teacher_chunk_span=None,
    teacher_chunk_logprob=None, alm_temperature=1.0,
):
    """Fusion loss of the logits ``hidden @ weight.T (+ bias)`` computed chunk by chunk.

    ``labels``, ``teacher_ids``, ``teacher_logits`` and every keyword shared with
    :func:`fusekernels.loss.fusion_loss` have the same meaning and shapes there, with the leading
    dims ``...`` of ``hidden``.

    Args:
        hidden: [..., H] student hidden states (what the LM head consumes), fp32/bf16/fp16.
        weight: [V, H] LM-head weight, same dtype as ``hidden``.
        bias: optional [V] LM-head bias.
        reduction: "mean" or "sum" (a scalar; see the module docstring).
        chunk_rows: rows per chunk (default: a ~64 MB fp32 ``[chunk, V]`` buffer on CPU,
            ~256 MB on GPUs; see ``default_chunk_rows``).

    Returns a 0-d float32 loss (or, with ``return_components``, whatever ``fusion_loss``
    returns for its components, summed over chunks) identical to ``fusion_loss`` on the full
    logits. Gradients flow to ``hidden``, ``weight`` and ``bias``.

    ``loss_type="alm"``: a chunk of text may span row chunks, so a first pass over the row chunks
    (logits recomputed, no gradient) gives every row's log-likelihood of its label; the chunk
    terms are then computed on the whole batch and each row chunk gets its rows' share.
    """
    if not isinstance(hidden, torch.Tensor) or hidden.dim() < 2:
        raise ValueError(f"hidden must be a tensor [..., H] with at least 2 dims, got "
                         f"{tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__}")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight must be [V, H] with H = hidden.shape[-1] = {hidden.shape[-1]}, got "
                         f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}")
    if weight.dtype != hidden.dtype:
        raise TypeError(f"weight dtype {weight.dtype} must equal hidden dtype {hidden.dtype}")
    if bias is not None and (bias.shape != (weight.shape[0],) or bias.dtype != weight.dtype):
        raise ValueError(f"bias must be [{weight.shape[0]}] of dtype {weight.dtype}, "
                         f"got {tuple(bias.shape)} {bias.dtype}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum' for the fused linear loss, got {reduction!r}")
    if chunk_rows is not None and int(chunk_rows) < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")

    lead = hidden.shape[:-1]
    chunked_text = LOSS_TYPES.get_entry(loss_type, "loss_type").needs_chunks
    rows = {"labels": _flatten_rows("labels", labels, lead, 0),
            "fusion_mask": _flatten_rows("fusion_mask", fusion_mask, lead, 0),
            "teacher_ids": _flatten_rows("teacher_ids", teacher_ids, lead, 2),
            "teacher_logits": _flatten_rows("teacher_logits", teacher_logits, lead, 2)}
    for name, value in (("teacher_counts", teacher_counts), ("teacher_ce", teacher_ce),
                        ("teacher_weights", teacher_weights)):
        rows[name] = _flatten_rows(name, value, lead, 1)
    if chunked_text:
        rows["teacher_chunk_span"] = _flatten_rows("teacher_chunk_span", teacher_chunk_span, lead, 1)
    if reduction == "mean":
        # Every chunk must divide by the counts of the whole batch (not its own), so that the
        # chunk losses simply add up: pass fusion_loss the global denominators explicitly.
        if rows["labels"] is not None:
            num_items_in_batch = _denominator(num_items_in_batch, rows["labels"] != ignore_index)
        if rows["fusion_mask"] is not None:
            num_fusion_items = _denominator(num_fusion_items, rows["fusion_mask"] != 0)
        elif rows["labels"] is None and num_fusion_items is None:
            num_fusion_items = hidden.numel() // hidden.shape[-1]  # no labels: every row counts
    options = dict(fusion=fusion, loss_type=loss_type, temperature=temperature, lam=lam, ignore_index=ignore_index,
                   reduction=reduction, num_items_in_batch=num_items_in_batch, num_fusion_items=num_fusion_items,
                   backend=backend, return_components=return_components, precision=precision,
                   base_teacher=base_teacher, alm_temperature=alm_temperature)
    n_rows, vocab = hidden.numel() // hidden.shape[-1], weight.shape[0]
    if n_rows == 0:
        raise ValueError("hidden has no rows (empty sequence)")
    chunk = int(chunk_rows) if chunk_rows is not None else default_chunk_rows(vocab, hidden.device.type)
    if chunked_text:
        if rows["labels"] is None:
            raise ValueError("loss_type='alm' compares the student's likelihood of the labels: labels are needed")
        row_lp = _label_logprobs(hidden.detach().reshape(n_rows, -1), weight.detach(),
                                 bias.detach() if bias is not None else None, rows["labels"], ignore_index, chunk)
        plan = alm_plan(row_lp, rows["labels"], teacher_chunk_span, teacher_chunk_logprob, lead_shape=lead,
                        teacher_ce=teacher_ce, teacher_weights=teacher_weights, fusion=fusion, lam=lam,
                        ignore_index=ignore_index, fusion_mask=rows["fusion_mask"], reduction=reduction,
                        num_items_in_batch=num_items_in_batch, num_fusion_items=num_fusion_items,
                        alm_temperature=alm_temperature)
        rows["_alm_rows"] = plan
    result = {}
    grad_enabled = torch.is_grad_enabled()  # Function.forward itself always runs without grad mode

    def run(hidden_t, weight_t, bias_t, needs_grad):
        needs_grad = tuple(bool(n) and grad_enabled for n in needs_grad)
        return _run_chunks(hidden_t.reshape(n_rows, -1), weight_t, bias_t, rows, options, chunk, needs_grad, result,
                           hidden_t.shape)

    loss = _ChunkedLinearFusion.apply(hidden, weight, bias, run)
    if not return_components:
        return loss
    return result["output_type"](loss, result["clm_loss"], result["fusion_loss"])


def _run_chunks(hidden, weight, bias, rows, options, chunk, needs_grad, result, hidden_shape):
    """Run every chunk; returns (loss 0-d fp32, (grad_h, grad_w, grad_b)). With
    ``return_components`` the summed detached components are stored into ``result``."""
    n_rows, want_components = hidden.shape[0], options["return_components"]
    need_h, need_w, need_b = needs_grad
    any_grad = need_h or need_w or need_b
    grad_h = torch.empty_like(hidden) if need_h else None
    acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32  # accumulators
    grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
    grad_b = torch.zeros(weight.shape[0], dtype=acc, device=weight.device) if need_b else None
    total = torch.zeros((), dtype=acc, device=hidden.device)
    clm_total, fusion_total = total.clone(), total.clone()
    for start in range(0, n_rows, chunk):
        end = min(start + chunk, n_rows)
        h = hidden[start:end]
        z = torch.addmm(bias, h, weight.t()) if bias is not None else h @ weight.t()
        chunk_rows = {name: _rows_slice(value, start, end) for name, value in rows.items()}
        with torch.enable_grad():
            z.requires_grad_(any_grad)
            out = fusion_loss(z, chunk_rows.pop("labels"), chunk_rows.pop("teacher_ids"),
                              chunk_rows.pop("teacher_logits"), **chunk_rows, **options,
                              inplace_backward=any_grad)
            loss = out.loss if want_components else out
            if any_grad:
                (g,) = torch.autograd.grad(loss, z)
        total += loss.detach()
        if want_components:
            clm_total += out.clm_loss.detach()
            fusion_total += out.fusion_loss.detach()
            result["output_type"] = type(out)
        if not any_grad:
            continue
        if need_h:
            torch.mm(g, weight, out=grad_h[start:end])
        if need_w:
            if g.dtype == acc:
                grad_w.addmm_(g.t(), h)
            else:  # low-precision matmul (fp32 accumulation inside), summed over chunks in fp32
                grad_w += torch.mm(g.t(), h)
        if need_b:
            grad_b += g.sum(0, dtype=acc)
        del g, z
    if want_components:
        result.update(clm_loss=clm_total, fusion_loss=fusion_total)
    grads = (grad_h.reshape(hidden_shape) if grad_h is not None else None,
             grad_w.to(weight.dtype) if grad_w is not None else None,
             grad_b.to(weight.dtype) if grad_b is not None else None)
    return total, grads
