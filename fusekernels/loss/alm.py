"""Approximate likelihood matching (ALM) of aligned text chunks: a fusion term without vocabulary map.

Minixhofer et al. 2025 ("Universal Cross-tokenizer Distillation via Approximate Likelihood
Matching") compare a teacher and a student on *chunks*: spans of text that both tokenizations
encode with whole tokens (:mod:`fusekernels.tokenization.chunks`). A chunk's likelihood under a
model is the product of its tokens' next-token probabilities, so it is comparable across
tokenizers. With ``A`` the teacher's and ``S`` the student's chunk log-likelihood and a
temperature ``tau``, the chunk term is the binary KL divergence

    D(A, S) = a log(a / b) + (1 - a) log((1 - a) / (1 - b)),   a = exp(A / tau), b = exp(S / tau),

i.e. "the chunk is produced" / "it is not" as two Bernoulli outcomes (the binary cross-entropy of
the paper minus the teacher's entropy, a constant: same gradient, 0 at a match). Log-probabilities
are clamped to at most ``-1e-6`` so that ``log(1 - b)`` stays finite.

Rows follow the loss's convention: row r predicts label ``y_r``; the student's log-likelihood of
a chunk recorded at row e with span s is ``S = sum_{r = e-s+1..e} log softmax(z_r)[y_r]``. Since
``d log softmax(z_r)[y_r] / d z_r = onehot(y_r) - p_r``, the chunk term's gradient on row r is
``coef_r * (p_r - onehot(y_r))``: a CLM-shaped gradient with a per-row coefficient, which is how
both backends run it (a forward pass for the rows' log-likelihoods, then the usual fused pass
with the CLM scale of every row raised by its coefficient).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

CLAMP = 1e-6


class ChunkTerms(NamedTuple):
    """Per row and teacher [N, T], non-zero only at valid chunk ends: ``value`` D(A, S), ``slope``
    dD/dS, ``ends`` bool; ``covers`` [N, T] bool: the row lies in a valid chunk of the teacher."""

    value: torch.Tensor
    slope: torch.Tensor
    ends: torch.Tensor
    covers: torch.Tensor


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate on both sides of -log 2."""
    return torch.where(x < -math.log(2.0), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def binary_kl(teacher_logprob: torch.Tensor, student_logprob: torch.Tensor, temperature: float = 1.0):
    """(D, dD/dS) of the module docstring, elementwise, computed in the inputs' dtype."""
    la = torch.clamp(teacher_logprob / temperature, max=-CLAMP)
    lb = torch.clamp(student_logprob / temperature, max=-CLAMP)
    a = torch.exp(la)
    l1a, l1b = _log1mexp(la), _log1mexp(lb)
    value = a * (la - lb) + (1 - a) * (l1a - l1b)
    # dD/dlb = -a + (1 - a) * b / (1 - b); lb = S / tau (0 where the clamp is active)
    slope = (-a + (1 - a) * torch.exp(lb - l1b)) / temperature
    slope = torch.where(student_logprob / temperature < -CLAMP, slope, torch.zeros_like(slope))
    return value, slope


def check_chunks(span, logprob, lead_shape, n_teachers, device):
    """Validate ``teacher_chunk_span`` [..., T] int >= 0 and ``teacher_chunk_logprob`` [..., T]
    float <= 0 (finite); returns them flattened to [N, T] (int64, float)."""
    from .inputs import INT_DTYPES

    target = (*lead_shape, n_teachers)
    for name, value, dtypes in (("teacher_chunk_span", span, INT_DTYPES),
                                ("teacher_chunk_logprob", logprob, (torch.float16, torch.bfloat16, torch.float32,
                                                                    torch.float64))):
        if value is None:
            raise ValueError(f"loss_type='alm' needs {name} ([..., T] per row and teacher; see "
                             "fusekernels.tokenization.chunks)")
        if not isinstance(value, torch.Tensor) or value.dtype not in dtypes:
            raise TypeError(f"{name} must be a torch.Tensor of dtype {dtypes}, got "
                            f"{getattr(value, 'dtype', type(value).__name__)}")
        if value.device != device:
            raise ValueError(f"{name} is on {value.device} but logits are on {device}")
        if tuple(value.shape) != target:
            raise ValueError(f"{name} must have shape {target} ([..., T]), got {tuple(value.shape)}")
    n = math.prod(lead_shape)
    span, logprob = span.reshape(n, n_teachers).to(torch.int64), logprob.reshape(n, n_teachers)
    if bool((span < 0).any()):
        raise ValueError("teacher_chunk_span must be >= 0 (rows in the chunk ending at a row; 0 = none)")
    if bool(torch.isnan(logprob).any()) or bool((logprob > 0).any()) or bool(torch.isinf(logprob).any()):
        raise ValueError("teacher_chunk_logprob must be finite and <= 0 (a log-likelihood)")
    return span, logprob


def chunk_terms(row_logprob: torch.Tensor, span: torch.Tensor, logprob: torch.Tensor, row_ok: torch.Tensor,
                lead_shape, temperature: float) -> ChunkTerms:
    """Chunk terms from the student's per-row log-likelihoods.

    row_logprob [N] float: log softmax(z_r)[y_r] (any value on rows without a label);
    span [N, T] int64, logprob [N, T] float (:func:`check_chunks`); row_ok [N] bool: the row has a
    label. A chunk counts when all its rows have labels and lie in one sequence (the last dim of
    ``lead_shape`` is the sequence; 1-D leads are one sequence).
    """
    n, n_teachers = span.shape
    work = row_logprob.dtype
    device = row_logprob.device
    seq_len = lead_shape[-1] if len(lead_shape) >= 1 else n
    position = torch.arange(n, device=device) % max(int(seq_len), 1)
    ends = (span > 0) & (span <= (position + 1)[:, None])
    # prefix sums over rows (fp64: no cancellation over long batches): S = C[e + 1] - C[e + 1 - s];
    # rows without labels must not be inside a chunk
    zero = torch.zeros(1, dtype=torch.float64, device=device)
    lp64 = torch.where(row_ok, row_logprob, torch.zeros_like(row_logprob)).to(torch.float64)
    csum = torch.cat([zero, torch.cumsum(lp64, 0)])
    bad = torch.cat([zero.long(), torch.cumsum((~row_ok).long(), 0)])
    e = torch.arange(n, device=device)[:, None].expand(n, n_teachers)
    first = torch.clamp(e + 1 - span, min=0)
    ends &= (bad[e + 1] - bad[first]) == 0
    student = (csum[e + 1] - csum[first]).to(work)
    value, slope = binary_kl(logprob.to(work), student, temperature)
    zeros = torch.zeros_like(value)
    value, slope = torch.where(ends, value, zeros), torch.where(ends, slope, zeros)
    # rows covered by a valid chunk: +1 at its first row, -1 after its last row
    delta = torch.zeros(n + 1, n_teachers, dtype=torch.int64, device=device)
    delta.scatter_add_(0, first, ends.long())
    delta.scatter_add_(0, e + 1, -ends.long())
    covers = torch.cumsum(delta, 0)[:n] > 0
    return ChunkTerms(value, slope, ends, covers)


def spread_to_rows(chunk_coef: torch.Tensor, ends: torch.Tensor, covers: torch.Tensor) -> torch.Tensor:
    """[N] per-row sum over teachers of ``chunk_coef`` [N, T] (given at chunk ends): every row
    takes the value of the chunk that covers it (a teacher's chunks never overlap)."""
    n, n_teachers = chunk_coef.shape
    device = chunk_coef.device
    row = torch.arange(n, device=device)[:, None].expand(n, n_teachers)
    # the first chunk end at or after each row (n where none): a reversed running minimum
    at_end = torch.where(ends, row, torch.full_like(row, n))
    next_end = torch.flip(torch.cummin(torch.flip(at_end, [0]), 0).values, [0])
    taken = torch.gather(torch.cat([chunk_coef, torch.zeros_like(chunk_coef[:1])]), 0, next_end)
    return torch.where(covers, taken, torch.zeros_like(taken)).sum(-1)
