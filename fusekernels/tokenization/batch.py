"""Whole batches in one native call: flat arrays in, flat arrays out, no Python loop per row.

A batch of R rows is given as flat id arrays with int64 row offsets ``[R + 1]`` (row r is
``ids[offsets[r]:offsets[r + 1]]``), which is exactly how Arrow stores list columns, so a
``Dataset.map`` batch in Arrow format goes to the kernel without converting rows to Python lists.
The Arrow helpers here turn list columns into ``(values, offsets)`` and back (zero-copy where
Arrow allows).

:func:`byte_span_align_flat` gives results identical to :func:`byte_span_align` row by row (tested
on real tokenizer pairs and by property tests). Any row the kernel rejects (an empty sequence, an
id out of range, a NaN logit, two different texts) sends the batch through the per-row path,
which raises the per-row error message.
"""
from __future__ import annotations

import threading

import numpy as np

from .profile import TokenizerProfile

__all__ = ["byte_span_align_flat", "arrow_lists", "arrow_matrix", "list_array", "nested_array"]

_DUMMY_CODES = {"none": 0, "always": 1, "unless_space": 2}
_PACKS: dict = {}
_PACK_LOCK = threading.Lock()


def _vocab_pack(profile: TokenizerProfile) -> tuple:
    """The kernel's view of one vocabulary (cached per profile object)."""
    with _PACK_LOCK:
        hit = _PACKS.get(id(profile))
        if hit is not None and hit[0] is profile:
            return hit[1]
    lengths = np.ascontiguousarray(profile.byte_lengths, dtype=np.int32)
    offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    data = np.frombuffer(b"".join(profile.token_bytes), dtype=np.uint8)
    unk = profile.special_ids.get("unk")
    pack = (lengths, data, offsets, -1 if unk is None else int(unk), _DUMMY_CODES[profile.dummy_prefix])
    with _PACK_LOCK:
        _PACKS[id(profile)] = (profile, pack)
    return pack


def _ids32(values: np.ndarray, vocab: int) -> np.ndarray | None:
    """int32 view/copy of integer ids, or None when they cannot be passed as int32 unchanged."""
    if not np.issubdtype(values.dtype, np.integer):
        return None
    if values.dtype != np.int32:
        if values.size and (int(values.min()) < 0 or int(values.max()) >= vocab):
            return None
        values = values.astype(np.int32)
    return np.ascontiguousarray(values)


def byte_span_align_flat(base_ids, base_offsets, blend_ids, blend_offsets, topk_ids, topk_logits,
                         base: TokenizerProfile, blend: TokenizerProfile, *, id_map=None, texts=None,
                         match: str = "span", check: str = "length", k: int | None = None, threads: int = 1):
    """:func:`byte_span_align` of R rows in one native call (GIL released).

    Args:
        base_ids: int [M] base ids of all rows; base_offsets: int [R + 1] row offsets (0 first).
        blend_ids: int [N]; blend_offsets: int [R + 1].
        topk_ids: int [N, k_in], topk_logits: float [N, k_in]: the teacher's top-k per blending token.
        id_map: a :class:`ByteSpanMap` (default ``build_byte_span_map(base, blend)``).
        texts: ``None`` or R texts (or ``None`` entries), as ``text`` of :func:`byte_span_align`.
        match, check: as for :func:`byte_span_align`.
        k: output width (default k_in, at least 1): the per-row result cut or padded to k.
        threads: native threads over rows (0: all cores).
    Returns:
        ``(ids int32 [M, k], logits float32 [M, k], matched bool [M])``: row r's entries are
        ``[base_offsets[r]:base_offsets[r + 1]]``; ``matched`` is ``byte_span_align``'s mask.
    Raises:
        ValueError with the per-row message (prefixed ``rows[r]:``) for the first bad row.
    """
    from fusekernels import _C

    from .byte_span import CHECKS, MATCH_RULES, build_byte_span_map

    if match not in MATCH_RULES:
        raise ValueError(f"match must be one of {MATCH_RULES}, got {match!r}")
    if check not in CHECKS:
        raise ValueError(f"check must be one of {CHECKS}, got {check!r}")
    table = build_byte_span_map(base, blend) if id_map is None else id_map
    if table.ids.shape[0] != blend.vocab_size:
        raise ValueError(f"id_map covers {table.ids.shape[0]} blending ids, the blending vocabulary has "
                         f"{blend.vocab_size}")
    b_off = np.ascontiguousarray(base_offsets, dtype=np.int64)
    a_off = np.ascontiguousarray(blend_offsets, dtype=np.int64)
    rows = b_off.size - 1
    if rows < 0 or a_off.size != b_off.size:
        raise ValueError(f"base_offsets and blend_offsets must both have rows + 1 entries, got {b_off.size} "
                         f"and {a_off.size}")
    tid_in, tlg_in = np.asarray(topk_ids), np.asarray(topk_logits)
    if tid_in.ndim != 2 or tlg_in.shape != tid_in.shape:
        raise ValueError(f"topk_ids and topk_logits must both be [N, k], got {tid_in.shape} and {tlg_in.shape}")
    width = max(tid_in.shape[1], 1) if k is None else int(k)
    if texts is not None and len(texts) != rows:
        raise ValueError(f"texts must have one entry per row ({rows}), got {len(texts)}")
    b = _ids32(np.asarray(base_ids).reshape(-1), base.vocab_size)
    a = _ids32(np.asarray(blend_ids).reshape(-1), blend.vocab_size)
    tid = _ids32(tid_in, blend.vocab_size)
    floating = np.issubdtype(tlg_in.dtype, np.floating)
    # +inf logits are refused by the per-row path (the kernel only rejects NaN)
    failed = 0 if b is None or a is None or tid is None or not floating or bool(np.isposinf(tlg_in).any()) else -1
    if failed < 0:
        text_space = None
        if texts is not None and "unless_space" in (base.dummy_prefix, blend.dummy_prefix):
            text_space = np.fromiter((-1 if t is None else t[:1] == " " for t in texts), dtype=np.int8, count=rows)
        check_native = "none" if "wordpiece" in (base.kind, blend.kind) else check
        ids, logits, matched, failed = _C.byte_span_align_batch(
            _vocab_pack(base), _vocab_pack(blend), np.ascontiguousarray(table.ids, dtype=np.int32), b, b_off, a,
            a_off, tid, np.ascontiguousarray(tlg_in, dtype=np.float32), text_space, match == "end", check_native,
            width, threads)
    if failed >= 0:
        _raise_per_row(base_ids, b_off, blend_ids, a_off, tid_in, tlg_in, base, blend, table, texts, match, check)
        raise RuntimeError(f"native byte-span alignment rejected row {failed}, which the per-row path accepts")
    return ids, logits, matched


def _raise_per_row(base_ids, b_off, blend_ids, a_off, tid, tlg, base, blend, table, texts, match, check):
    """Run the per-row path over every row so that the first bad one raises its own message."""
    from .byte_span import byte_span_align

    base_ids, blend_ids = np.asarray(base_ids).reshape(-1), np.asarray(blend_ids).reshape(-1)
    for r in range(b_off.size - 1):
        a0, a1 = a_off[r], a_off[r + 1]
        try:
            byte_span_align(base_ids[b_off[r]:b_off[r + 1]], blend_ids[a0:a1], tid[a0:a1], tlg[a0:a1], base, blend,
                            id_map=table, text=None if texts is None else texts[r], match=match, check=check)
        except ValueError as exc:
            raise ValueError(f"rows[{r}]: {exc}") from None


# ---------------------------------------------------------------------- Arrow columns
def _storage(column):
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if isinstance(column, pa.ExtensionArray):
        column = column.storage
    return column


def _offsets(arr) -> np.ndarray:
    off = np.asarray(arr.offsets, dtype=np.int64)
    return off - off[0] if off.size and off[0] else off


def arrow_lists(column) -> tuple[np.ndarray, np.ndarray]:
    """``(values [total], offsets int64 [rows + 1])`` of an Arrow list column (no nulls)."""
    import pyarrow as pa

    arr = _storage(column)
    if not pa.types.is_list(arr.type) and not pa.types.is_large_list(arr.type):
        raise ValueError(f"expected a list column, got Arrow type {arr.type}")
    if arr.null_count:
        raise ValueError("list column holds null rows")
    return arr.flatten().to_numpy(zero_copy_only=False), _offsets(arr)


def arrow_matrix(column) -> tuple[np.ndarray, np.ndarray] | None:
    """``(values [total, k], offsets int64 [rows + 1])`` of a column of [n_r, k] matrices (Array2D
    or nested lists), or None when the inner lists do not all have one length."""
    import pyarrow as pa

    arr = _storage(column)
    if arr.null_count:
        raise ValueError("matrix column holds null rows")
    outer = _offsets(arr)
    inner = arr.flatten()
    if pa.types.is_fixed_size_list(inner.type):
        k = inner.type.list_size
    else:
        if inner.null_count:
            return None
        inner_off = _offsets(inner)
        lengths = np.diff(inner_off)
        if lengths.size and (lengths != lengths[0]).any():
            return None
        k = int(lengths[0]) if lengths.size else 0
    values = inner.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(outer[-1], k), outer


def list_array(values: np.ndarray, offsets: np.ndarray):
    """Arrow list column from flat ``values`` [total] and ``offsets`` [rows + 1]."""
    import pyarrow as pa

    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32, copy=False)), pa.array(values))


def nested_array(values: np.ndarray, offsets: np.ndarray):
    """Arrow ``list<list<...>>`` column (storage of ``Array2D``/``Array3D`` with a free first
    dimension) from ``values`` [total, d1, ...] and row ``offsets`` [rows + 1]."""
    import pyarrow as pa

    arr = pa.array(np.ascontiguousarray(values).reshape(-1))
    for level in range(values.ndim - 1, 0, -1):
        lists = int(np.prod(values.shape[:level]))
        arr = pa.ListArray.from_arrays(pa.array(np.arange(lists + 1, dtype=np.int32) * values.shape[level]), arr)
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32, copy=False)), arr)
