"""Alignment modes: how a teacher's top-k reaches the base tokenization, one registry entry each.

:func:`~fusekernels.tokenization.align_dataset`, :func:`~fusekernels.pipeline.align_teachers`,
:func:`~fusekernels.pipeline.build_fusion_dataset`, the recipes and the command line's
``--method`` choices read :data:`ALIGNMENT_MODES`. A new mode is one row function and one
registration::

    import numpy as np
    from fusekernels.align.topk_transfer import TopKResult
    from fusekernels.tokenization.registry import ALIGNMENT_MODES, AlignmentMode

    def one_hot(rows, base, blend, *, tables, texts, match, check, threads):
        out = []
        for base_ids, blend_ids, topk_ids, topk_logits in rows:   # int [m], int [n], [n, k], [n, k]
            m = len(base_ids)
            ids, logits = np.asarray(base_ids, np.int32)[:, None], np.ones((m, 1), np.float32)
            out.append((TopKResult(ids=ids, logits=logits, counts=np.ones(m, np.int32)), np.zeros(m, bool)))
        return out

    ALIGNMENT_MODES.register(AlignmentMode("one_hot", align_rows=one_hot, help="no teacher at all"))
    # align_dataset(..., method="one_hot"), align_teachers(..., method="one_hot"), --method one_hot
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from ..registry import Registry


def _no_tables(base, blend, vocab_map=None):
    return None


@dataclass(frozen=True)
class AlignmentMode:
    """One way to put a teacher's top-k on the base tokenization.

    ``align_rows(rows, base, blend, *, tables, texts, match, check, threads)``: ``rows`` a list of
    ``(base_ids int [m], blend_ids int [n], topk_ids int [n, k], topk_logits float [n, k])``, ``base``
    / ``blend`` :class:`~fusekernels.tokenization.TokenizerProfile`; returns one ``(TopKResult,
    matched bool [m])`` per row (``TopKResult.ids`` int [m, k'] padded -1, ``logits`` [m, k'] padded
    -inf; ``matched`` True where the position got the teacher's own distribution). ``texts``: the
    rows' texts or None; ``check``: one of ``byte_span.CHECKS``; ``threads``: native threads (0 = all
    cores). A bad row raises ``ValueError("rows[i]: <why>")`` (``i`` its position in ``rows``; the
    callers name the row of the dataset instead).

    ``build_tables(base, blend, vocab_map)``: the per-pair tables, built once in the calling process
    and passed to every call as ``tables`` (default: None).
    ``align_flat``: optional whole-batch path with the signature of
    :func:`~fusekernels.tokenization.byte_span_align_flat` (``id_map`` = the tables) returning
    ``(ids int32 [M, k], logits float32 [M, k], matched bool [M])``; rows it rejects are retried
    by ``align_rows`` for their own message.
    ``reads_text(base, blend) -> bool``: whether the aligner uses the rows' texts for this pair
    (None: never); ``uses_vocab_map``: ``vocab_map`` shapes the tables (it enters the cache key);
    ``empty_lists``: a position's aligned list may be empty in normal use, so the published
    fallback needs the base model as teacher 0.
    """

    name: str
    align_rows: Callable
    build_tables: Callable = _no_tables
    align_flat: Optional[Callable] = None
    reads_text: Optional[Callable] = None
    uses_vocab_map: bool = False
    empty_lists: bool = False
    help: str = ""

    def texts_needed(self, base, blend) -> bool:
        return self.reads_text is not None and bool(self.reads_text(base, blend))


ALIGNMENT_MODES: Registry[AlignmentMode] = Registry("method")


# ---------------------------------------------------------------------- built-in modes
def _byte_span_tables(base, blend, vocab_map=None):
    from .byte_span import build_byte_span_map

    return build_byte_span_map(base, blend)


def _byte_span_rows(rows, base, blend, *, tables, texts, match, check, threads):
    from .byte_span import byte_span_align

    out = []
    for r, row in enumerate(rows):
        try:
            out.append(byte_span_align(*row, base, blend, id_map=tables, match=match, check=check, return_mask=True,
                                       text=None if texts is None else texts[r]))
        except ValueError as exc:
            raise ValueError(f"rows[{r}]: {exc}") from None
    return out


def _byte_span_flat(*args, **kwargs):
    from .batch import byte_span_align_flat

    return byte_span_align_flat(*args, **kwargs)


def _compat(mode: str):
    def tables(base, blend, vocab_map=None):
        from .compat import compat_tables

        return compat_tables(base, blend, mode=mode, vocab_map=vocab_map)

    def rows_fn(rows, base, blend, *, tables, texts, match, check, threads):
        from .compat import compat_align_batch

        return compat_align_batch(rows, base, blend, mode=mode, tables=tables, threads=threads, check=check,
                                  return_mask=True)

    return tables, rows_fn


ALIGNMENT_MODES.register(AlignmentMode(
    "byte_span", _byte_span_rows, build_tables=_byte_span_tables, align_flat=_byte_span_flat,
    reads_text=lambda base, blend: "unless_space" in (base.dummy_prefix, blend.dummy_prefix),
    help="exact byte spans with an exact-bytes id map (default)"))
_tables, _rows = _compat("hard")
ALIGNMENT_MODES.register(AlignmentMode(
    "compat_hard", _rows, build_tables=_tables, empty_lists=True,
    help="the published DTW alignment, exact vocabulary match"))
_tables, _rows = _compat("soft")
ALIGNMENT_MODES.register(AlignmentMode(
    "compat_soft", _rows, build_tables=_tables, uses_vocab_map=True,
    help="the published DTW alignment, MinED vocabulary map"))
del _tables, _rows
