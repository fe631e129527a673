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

from .byte_span import check_same_text, span_keys
from .profile import TokenizerProfile

__all__ = ["AlignedChunks", "FlatChunks", "aligned_chunks", "aligned_chunks_flat"]


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


def _boundary_keys(lengths: np.ndarray, ends: np.ndarray, start) -> np.ndarray:
    """(end offset, token is non-empty) of every token; ``ends`` are within-row cumulative byte
    lengths and ``start`` the row's dummy-prefix bytes (scalar or per token)."""
    keys = span_keys(lengths, ends, start)
    mask = np.int64(0xFFFFFFFF)
    return ((keys & mask) << 1) | ((keys >> 32) != (keys & mask))


def _unique_positions(keys: np.ndarray) -> np.ndarray:
    """bool [n]: the key occurs once in ``keys``."""
    order = np.sort(keys, kind="stable")
    count = np.searchsorted(order, keys, side="right") - np.searchsorted(order, keys, side="left")
    return count == 1


def _row_cumsum(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Within-row inclusive cumulative sums of flat ``values`` (rows given by ``offsets``)."""
    total = np.cumsum(values, dtype=np.int64)
    before = np.concatenate([[0], total])[offsets[:-1]]
    return total - np.repeat(before, np.diff(offsets))


@dataclass
class FlatChunks:
    """:class:`AlignedChunks` of a batch: flat ``span`` / ``logprob`` / ``nats_per_byte`` [M] over
    the student rows' positions, and ``sequence_nats_per_byte`` [R] per row."""

    span: np.ndarray
    logprob: np.ndarray
    nats_per_byte: np.ndarray
    sequence_nats_per_byte: np.ndarray


def aligned_chunks_flat(student_ids, student_offsets, teacher_ids, teacher_offsets, teacher_token_ce,
                        student: TokenizerProfile, teacher: TokenizerProfile, *, texts=None,
                        check: str = "prefix") -> FlatChunks:
    """:func:`aligned_chunks` of a whole batch at once, vectorised over its rows.

    Args:
        student_ids: int [M] student ids of R texts concatenated; student_offsets: int [R + 1].
        teacher_ids: int [N] teacher ids of the same texts; teacher_offsets: int [R + 1].
        teacher_token_ce: float [N], per teacher position (see :func:`aligned_chunks`).
        texts: the R texts (or None), only to resolve a SentencePiece dummy prefix exactly.
        check: how each row pair is verified to cover the same text (see
            :func:`fusekernels.tokenization.check_same_text`).
    """
    b = student.check_ids(student_ids, "student_ids")
    a = teacher.check_ids(teacher_ids, "teacher_ids")
    s_off = np.asarray(student_offsets, dtype=np.int64)
    t_off = np.asarray(teacher_offsets, dtype=np.int64)
    rows = s_off.size - 1
    if t_off.size != s_off.size or s_off[-1] != b.size or t_off[-1] != a.size or rows < 0:
        raise ValueError(f"offsets must be [R + 1] row boundaries of both id arrays (student {s_off.size}, "
                         f"teacher {t_off.size} offsets for {b.size} / {a.size} ids)")
    ce = np.asarray(teacher_token_ce, dtype=np.float64).reshape(-1)
    if ce.shape[0] != a.shape[0]:
        raise ValueError(f"teacher_token_ce has {ce.shape[0]} entries for {a.shape[0]} teacher tokens")
    last = np.zeros(a.size, dtype=bool)
    last[t_off[1:][np.diff(t_off) > 0] - 1] = True        # each row's last entry is unused
    if not np.isfinite(ce[~last]).all() or (ce[~last] < 0).any():
        raise ValueError("teacher_token_ce must be finite and >= 0 (a cross-entropy)")
    ce = np.where(last, 0.0, ce)
    s_len, t_len = np.diff(s_off), np.diff(t_off)
    s_row, t_row = np.repeat(np.arange(rows), s_len), np.repeat(np.arange(rows), t_len)
    starts = np.array([check_same_text(b[s_off[r]:s_off[r + 1]], a[t_off[r]:t_off[r + 1]], student, teacher,
                                       text=texts[r] if texts is not None else None, check=check)
                       for r in range(rows)], dtype=np.int64).reshape(rows, 2)
    b_len, a_len = student.byte_lengths[b].astype(np.int64), teacher.byte_lengths[a].astype(np.int64)
    # keys carry their row, so one sort and one search serve the whole batch
    bkey = (s_row << 40) | _boundary_keys(b_len, _row_cumsum(b_len, s_off), starts[s_row, 0])
    akey = (t_row << 40) | _boundary_keys(a_len, _row_cumsum(a_len, t_off), starts[t_row, 1])
    span = np.zeros(b.size, np.int32)
    logprob = np.zeros(b.size, np.float32)
    per_byte = np.full(b.size, np.nan, np.float32)
    seq_rate = np.full(rows, np.nan)
    if b.size == 0 or a.size == 0:
        return FlatChunks(span, logprob, per_byte, seq_rate)
    b_ok, a_ok = _unique_positions(bkey), _unique_positions(akey)
    a_sorted = np.argsort(akey, kind="stable")
    pos = np.minimum(np.searchsorted(akey[a_sorted], bkey), akey.size - 1)
    match = a_sorted[pos]
    # student token j ends a chunk where its key is unique in both and present in the teacher's
    j_end = np.flatnonzero((akey[match] == bkey) & b_ok & a_ok[match])
    i_end = match[j_end]
    same = s_row[j_end[1:]] == s_row[j_end[:-1]]        # consecutive ends of one row: a chunk
    j0, j1 = j_end[:-1][same], j_end[1:][same]          # student chunk (j0, j1]
    i0, i1 = i_end[:-1][same], i_end[1:][same]          # teacher chunk (i0, i1]
    if j0.size == 0:
        return FlatChunks(span, logprob, per_byte, seq_rate)
    # a chunk's teacher log-likelihood: -sum of the CE at teacher positions i0 .. i1-1
    cum = np.concatenate([[0.0], np.cumsum(ce)])
    chunk_lp = -(cum[i1] - cum[i0])
    b_cum = np.cumsum(b_len)
    nbytes = np.maximum(b_cum[j1] - b_cum[j0], 1)      # special-token chunks count one byte
    span[j1 - 1] = (j1 - j0).astype(np.int32)
    logprob[j1 - 1] = chunk_lp.astype(np.float32)
    # row r predicts token r + 1: rows j0 .. j1-1 lie in chunk (j0, j1]
    sizes = j1 - j0
    inside = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    per_byte[np.repeat(j0, sizes) + inside] = np.repeat((-chunk_lp / nbytes).astype(np.float32), sizes)
    chunk_row = s_row[j1]
    totals = np.bincount(chunk_row, weights=-chunk_lp, minlength=rows)
    counts = np.bincount(chunk_row, weights=nbytes, minlength=rows)
    seq_rate = np.where(counts > 0, totals / np.maximum(counts, 1), np.nan)
    return FlatChunks(span, logprob, per_byte, seq_rate)


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
    b = np.asarray(student_ids).reshape(-1)
    a = np.asarray(teacher_ids).reshape(-1)
    got = aligned_chunks_flat(b, [0, b.size], a, [0, a.size], teacher_token_ce, student, teacher,
                              texts=[text] if text is not None else None, check=check)
    return AlignedChunks(got.span, got.logprob, got.nats_per_byte, float(got.sequence_nats_per_byte[0]))
