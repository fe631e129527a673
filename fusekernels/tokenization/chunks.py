"""Aligned chunks: the shortest pieces of a text on which two tokenizations agree.

Two tokenizations of one text both have a token boundary at some byte offsets; between two
consecutive common boundaries lies a *chunk*: one or more student tokens and one or more teacher
tokens that encode exactly the same bytes. The likelihood of a chunk under each model (the
product of its tokens' next-token probabilities) is then comparable across tokenizers, which is
what approximate likelihood matching (Minixhofer et al. 2025) distils and what a per-position
choice between teachers can compare (in nats per byte, independent of token granularity).

Boundaries are compared as ``(end byte offset, token is non-empty)`` keys, so special tokens
(0 bytes, e.g. the EOS both sequences end with) form their own chunk with their counterpart, and
a key must be unique in both sequences. Token 0 of either sequence has no prediction (nothing
precedes it), so a chunk containing it has no likelihood; the tail after the last common
boundary (one sequence truncated) has no chunk either.

Rows follow the training convention: student row r holds what predicts student token r + 1, so a
chunk of student tokens ``(j0, j1]`` is scored on rows ``j0 .. j1 - 1`` and recorded at its last
row ``e = j1 - 1`` with ``span = j1 - j0`` rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .byte_span import _check_same_text, _span_keys
from .profile import TokenizerProfile

__all__ = ["AlignedChunks", "aligned_chunks"]


@dataclass
class AlignedChunks:
    """Per student row r (``m`` rows, one per student token):

    - ``span`` int32 [m]: at the last row of a chunk, its number of rows; 0 elsewhere;
    - ``logprob`` float32 [m]: at that row, the teacher's log-likelihood of the chunk's text
      (sum of its tokens' log-probabilities, <= 0); 0 elsewhere;
    - ``nats_per_byte`` float32 [m]: the teacher's negative log-likelihood per text byte of the
      chunk that row r predicts (token r + 1), NaN where no chunk covers it (special-token chunks
      count as one byte);
    - ``sequence_nats_per_byte``: the same over all chunks of the sequence (NaN without one).
    """

    span: np.ndarray
    logprob: np.ndarray
    nats_per_byte: np.ndarray
    sequence_nats_per_byte: float


def _boundary_keys(lengths: np.ndarray, start: int) -> np.ndarray:
    ends = np.cumsum(lengths, dtype=np.int64)
    keys = _span_keys(lengths, ends, start)
    mask = np.int64(0xFFFFFFFF)
    return ((keys & mask) << 1) | ((keys >> 32) != (keys & mask))  # (end offset, non-empty)


def _unique_positions(keys: np.ndarray) -> np.ndarray:
    """bool [n]: the key occurs once in ``keys``."""
    order = np.sort(keys, kind="stable")
    count = np.searchsorted(order, keys, side="right") - np.searchsorted(order, keys, side="left")
    return count == 1


def aligned_chunks(student_ids, teacher_ids, teacher_token_ce, student: TokenizerProfile, teacher: TokenizerProfile,
                   *, text: str | None = None, check: str = "prefix") -> AlignedChunks:
    """Aligned chunks of one text (see module docstring) with the teacher's chunk likelihoods.

    Args:
        student_ids: int [m] student token ids of the text (as the student trains on them).
        teacher_ids: int [n] teacher token ids of the same text (possibly truncated).
        teacher_token_ce: float [n]: at teacher position u, the teacher's cross-entropy of token
            u + 1 (the ``per_step_metric_ce`` of :func:`fusekernels.pipeline.extract.extract_teacher_topk`;
            the last entry is unused).
        check: how to verify that both cover the same text (see
            :func:`fusekernels.tokenization.check_same_text`); default ``"prefix"`` (truncation).
    """
    b = student.check_ids(student_ids, "student_ids")
    a = teacher.check_ids(teacher_ids, "teacher_ids")
    ce = np.asarray(teacher_token_ce, dtype=np.float64).reshape(-1)
    if ce.shape[0] != a.shape[0]:
        raise ValueError(f"teacher_token_ce has {ce.shape[0]} entries for {a.shape[0]} teacher tokens")
    if not np.isfinite(ce[:-1]).all() or (ce[:-1] < 0).any():
        raise ValueError("teacher_token_ce must be finite and >= 0 (a cross-entropy)")
    m = b.shape[0]
    span = np.zeros(m, np.int32)
    logprob = np.zeros(m, np.float32)
    per_byte = np.full(m, np.nan, np.float32)
    if m == 0 or a.shape[0] == 0:
        return AlignedChunks(span, logprob, per_byte, float("nan"))
    b_len, a_len = student.byte_lengths[b].astype(np.int64), teacher.byte_lengths[a].astype(np.int64)
    b_start, a_start = _check_same_text(student, b, teacher, a, text=text, check=check)
    bkey, akey = _boundary_keys(b_len, b_start), _boundary_keys(a_len, a_start)
    b_ok, a_ok = _unique_positions(bkey), _unique_positions(akey)
    # student token j ends a chunk where its key is unique in both and present in the teacher's
    a_sorted = np.argsort(akey, kind="stable")
    pos = np.searchsorted(akey[a_sorted], bkey)
    hit = pos < akey.size
    pos = np.minimum(pos, akey.size - 1)
    match = a_sorted[pos]
    common = hit & (akey[match] == bkey) & b_ok & a_ok[match]
    j_end = np.flatnonzero(common)                      # student chunk ends (token index)
    i_end = match[j_end]                                # teacher chunk ends
    if j_end.size < 2:
        return AlignedChunks(span, logprob, per_byte, float("nan"))
    j0, j1 = j_end[:-1], j_end[1:]                      # student chunk (j0, j1]
    i0, i1 = i_end[:-1], i_end[1:]                      # teacher chunk (i0, i1]
    # a chunk's teacher log-likelihood: -sum of the CE at teacher positions i0 .. i1-1
    cum = np.concatenate([[0.0], np.cumsum(ce[:-1])])   # cum[u] = sum of ce[:u]
    chunk_lp = -(cum[i1] - cum[i0])
    b_end = np.cumsum(b_len)
    nbytes = np.maximum(b_end[j1] - b_end[j0], 1)
    # chunks before the first common boundary contain token 0 and are never formed (j0 >= 0)
    rows_end = j1 - 1
    span[rows_end] = (j1 - j0).astype(np.int32)
    logprob[rows_end] = chunk_lp.astype(np.float32)
    rate = (-chunk_lp / nbytes).astype(np.float32)
    # row r predicts token r + 1: rows j0 .. j1-1 lie in chunk (j0, j1]; consecutive chunks tile
    # the rows from the first common boundary to the last
    per_byte[j_end[0]:j_end[-1]] = np.repeat(rate, j1 - j0)
    return AlignedChunks(span, logprob, per_byte, float(-chunk_lp.sum() / nbytes.sum()))
