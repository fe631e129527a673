"""Compatible mode end to end: the published FuseLLM alignment (DTW + top-k transfer) on token ids.

Given the base and blending token ids of one text and the blending model's top-k, this runs the
published DTW over the tokenizers' ``convert_ids_to_tokens`` strings (markers from the profiles) and
carries the top-k into the base vocabulary, "hard" or "soft", including the published byte-level
BPE special case at the first base position. The results equal the pure-Python reference of the
published code (ids, logits and order); the work is native (``fusekernels.align``) and the
per-pair integer tables are built once per (base, blending, mode, vocab map) and cached.

The published code aligns whatever it is given; here both sequences must cover the same text
(``check``, default ``"length"``: equal byte lengths from the profiles' token byte lengths, see
:func:`~fusekernels.tokenization.byte_span.check_same_text`), else ``ValueError``.
"""
from __future__ import annotations

import threading

import numpy as np

from .byte_span import CHECKS, check_same_text
from .profile import TokenizerProfile

__all__ = ["compat_tables", "compat_align", "compat_align_batch", "compat_teacher_mask"]

_TABLE_CACHE: dict = {}
_TABLE_LOCK = threading.Lock()


def compat_tables(base: TokenizerProfile, blend: TokenizerProfile, *, mode: str = "hard", vocab_map=None):
    """``TransferTables`` of the pair (cached per profile pair, mode and vocab map object).

    ``vocab_map`` (soft mode): a :class:`~fusekernels.tokenization.vocab_map.VocabMap` or the
    published ``{x': base token string}`` dict; default ``build_vocab_map(base, blend)``.
    """
    from fusekernels.align.topk_transfer import TRANSFER_MODES, build_transfer_tables

    if mode not in TRANSFER_MODES:
        raise ValueError(f"mode must be one of {TRANSFER_MODES}, got {mode!r}")
    if mode == "soft" and vocab_map is None:
        from .vocab_map import build_vocab_map

        vocab_map = build_vocab_map(base, blend)
    key = (id(base), id(blend), mode, id(vocab_map) if mode == "soft" else None)
    with _TABLE_LOCK:
        hit = _TABLE_CACHE.get(key)
        if hit is not None and hit[0] is base and hit[1] is blend and hit[2] is vocab_map:
            return hit[3]
    mapping = None
    if mode == "soft":
        mapping = vocab_map.to_dict() if hasattr(vocab_map, "to_dict") else vocab_map
    tables = build_transfer_tables(blend.tokens, base.tokens, blend_marker=blend.marker, base_marker=base.marker,
                                   vocab_map=mapping, byte_level_blend=blend.kind == "byte_level")
    with _TABLE_LOCK:
        _TABLE_CACHE[key] = (base, blend, vocab_map if mode == "soft" else None, tables)
    return tables


def compat_teacher_mask(base_ids, blend_ids, alignment, tables, result, *, mode: str = "hard") -> np.ndarray:
    """bool [m]: base positions that received the teacher's distribution (1:1 DTW group whose
    step matched and left at least one id), i.e. not the one-hot fallback."""
    b = np.asarray(base_ids, dtype=np.int64)
    a = np.asarray(blend_ids, dtype=np.int64)
    offsets = np.asarray(alignment.offsets, dtype=np.int64)
    single = np.diff(offsets) == 1
    i = np.asarray(alignment.indices, dtype=np.int64)[np.minimum(offsets[:-1], max(len(alignment.indices) - 1, 0))]
    src = a[i]
    target = tables.base_canonical[b]
    at_exact = tables.exact[src].astype(np.int64)
    at_soft = tables.soft[src].astype(np.int64) if (mode == "soft" and tables.soft is not None) else None
    if tables.byte_level_blend and tables.base_marker and tables.base_starts_with_marker[b[0]] \
            and not tables.blend_starts_with_marker[src[0]]:
        at_exact[0] = tables.exact_prefixed[src[0]]
        if at_soft is not None:
            at_soft[0] = tables.soft_prefixed[src[0]]
    match = (at_exact >= 0) & (at_exact == target)
    if at_soft is not None:
        match |= (at_soft >= 0) & (at_soft == target)
    return single & match & (np.asarray(result.counts) > 0)


def _align_one(base: TokenizerProfile, blend: TokenizerProfile, b: np.ndarray, a: np.ndarray):
    from fusekernels.align.dtw import dtw_align

    return dtw_align(blend.tokens_of(a), base.tokens_of(b), blend_marker=blend.marker, base_marker=base.marker)


def compat_align(base_ids, blend_ids, topk_ids, topk_logits, base: TokenizerProfile, blend: TokenizerProfile, *,
                 mode: str = "hard", vocab_map=None, tables=None, check: str = "length", return_mask: bool = False):
    """The published alignment of one sequence pair.

    Args:
        base_ids: int [m]; blend_ids: int [n] token ids of the same text.
        topk_ids: int [n, k] blending top-k ids; topk_logits: float [n, k] their logits.
        mode: "hard" or "soft" (soft uses ``vocab_map``, default the MinED map of ``build_vocab_map``).
        tables: prebuilt :func:`compat_tables` of the pair (else looked up in the cache).
        check: ``"length"`` (default), ``"bytes"``, ``"prefix"`` (one sequence truncated) or
            ``"none"``: how to verify that both sequences cover the same text (``check_same_text``;
            an ambiguous SentencePiece dummy-prefix space is accepted either way).
        return_mask: also return bool [m], positions that got the teacher's distribution.
    Returns:
        ``TopKResult`` (ids int32 [m, k] padded -1, logits float32 [m, k] padded -inf, counts
        int32 [m]; a matched position whose top-k has no base token has count 0, as published),
        plus the mask when ``return_mask``.
    Raises:
        ValueError naming the argument for bad input, and naming ``base_ids`` / ``blend_ids`` with
        both byte lengths when the two sequences cover different texts.
    """
    from fusekernels.align.topk_transfer import transfer_topk

    b = base.check_ids(base_ids, "base_ids")
    a = blend.check_ids(blend_ids, "blend_ids")
    if tables is None:
        tables = compat_tables(base, blend, mode=mode, vocab_map=vocab_map)
    check_same_text(b, a, base, blend, text=None, check=check)
    alignment = _align_one(base, blend, b, a)
    result = transfer_topk(b, a, alignment, topk_ids, topk_logits, tables, mode=mode)
    if return_mask:
        return result, compat_teacher_mask(b, a, alignment, tables, result, mode=mode)
    return result


def compat_align_batch(items, base: TokenizerProfile, blend: TokenizerProfile, *, mode: str = "hard",
                       vocab_map=None, tables=None, threads: int = 0, check: str = "length",
                       return_mask: bool = False) -> list:
    """:func:`compat_align` over ``items`` = sequence of ``(base_ids, blend_ids, topk_ids, topk_logits)``,
    DTW and transfer batched in native threads (``threads=0``: all cores). Every item is checked
    (``check``) before any work; error messages start with the item (``items[p]``)."""
    from fusekernels.align.dtw import dtw_align_batch
    from fusekernels.align.topk_transfer import transfer_topk_batch

    if check not in CHECKS:
        raise ValueError(f"check must be one of {CHECKS}, got {check!r}")
    if tables is None:
        tables = compat_tables(base, blend, mode=mode, vocab_map=vocab_map)
    checked = []
    for p, item in enumerate(items):
        if len(item) != 4:
            raise ValueError(f"items[{p}] must be (base_ids, blend_ids, topk_ids, topk_logits)")
        b = base.check_ids(item[0], f"items[{p}].base_ids")
        a = blend.check_ids(item[1], f"items[{p}].blend_ids")
        try:
            check_same_text(b, a, base, blend, text=None, check=check)
        except ValueError as exc:
            raise ValueError(f"items[{p}]: {exc}") from None
        checked.append((b, a, item[2], item[3]))
    alignments = dtw_align_batch([blend.tokens_of(a) for _, a, _, _ in checked],
                                 [base.tokens_of(b) for b, _, _, _ in checked],
                                 blend_marker=blend.marker, base_marker=base.marker, threads=threads)
    results = transfer_topk_batch([(b, a, al, ti, tl) for (b, a, ti, tl), al in zip(checked, alignments)],
                                  tables, mode=mode, threads=threads)
    if not return_mask:
        return results
    return [(r, compat_teacher_mask(b, a, al, tables, r, mode=mode))
            for r, (b, a, _, _), al in zip(results, checked, alignments)]
