"""Step 4 of the pipeline: pack aligned sequences into fixed-length training blocks.

Input rows hold the columns :class:`fusekernels.integration.FusionDataCollator` takes:
``input_ids`` [L] int, ``teacher_ids`` [L, T, k] int32 (base-vocabulary ids of every teacher's
aligned top-k), ``teacher_logits`` [L, T, k] float (``-inf`` = padding entry) and ``teacher_ce``
[T] (per-sequence metric) or [L, T] (per-token metric) float32.

Packing (published ``group_texts``): the rows of each map batch (``batch_size`` rows, 1000 as in
the Hugging Face recipe) are concatenated and cut into blocks of ``block_size`` tokens; the tail
that does not fill a block is dropped (``drop_last=False`` keeps it as a shorter block). Each
per-sequence metric is first repeated for every token of its sequence; a block's metric is the
mean of its tokens' metrics (``metric_level="sequence"``, published) or the per-token metrics
are kept as ``[block, T]`` (``metric_level="token"``). Output rows have the same columns, with
``teacher_ids`` int32 and ``teacher_logits`` in ``logits_dtype``.
"""
from __future__ import annotations

import numpy as np

from .._optional import require
from ..tokenization.dataset import LOGITS_DTYPES

# Granularity of the teacher CE metric of a block: one value per block, or one per token.
METRIC_LEVELS = ("sequence", "token")

PACKED_COLUMNS = ("input_ids", "teacher_ids", "teacher_logits", "teacher_ce")
# optional [L, T] per-position columns of align_teachers, packed along when present
CHUNK_COLUMNS = ("teacher_chunk_span", "teacher_chunk_logprob", "teacher_token_ce")


def pack_arrays(input_ids, teacher_ids, teacher_logits, teacher_ce, block_size: int, *,
                drop_last: bool = True, metric_level: str = "sequence", labels=None,
                chunks: dict | None = None, row_ids=None,
                logits_dtype: str | None = None) -> dict[str, list[np.ndarray]]:
    """Pack lists of per-sequence arrays (shapes as in the module docstring) into blocks.

    Returns a dict of lists (one entry per block): ``input_ids`` [B] int32, ``teacher_ids``
    [B, T, k] int32, ``teacher_logits`` [B, T, k] float32, ``teacher_ce`` [T] or [B, T] float32,
    and ``labels`` [B] int32 when per-sequence ``labels`` [L] (e.g. assistant-only, -100 elsewhere)
    are given. ``chunks``: ``{name: list of [L, T] arrays}`` for the aligned-chunk columns
    (``CHUNK_COLUMNS``), packed as [B, T]; a chunk that would reach back before its block's first
    row loses its span (its rows are in the previous block). ``row_ids``: the rows' numbers in
    their dataset, used in error messages (default 0, 1, ...). ``logits_dtype``: the dtype the
    logits will be stored in; a row whose logits do not fit it (NaN, +inf, beyond the float16
    range) raises ``ValueError`` naming the row.
    """
    from .extract import check_storable_logits

    _check_options(block_size, metric_level)
    n = len(input_ids)
    if not (len(teacher_ids) == len(teacher_logits) == len(teacher_ce) == n):
        raise ValueError("input_ids, teacher_ids, teacher_logits and teacher_ce must list the same number of rows")
    if labels is not None and len(labels) != n:
        raise ValueError("labels must list as many rows as input_ids")
    chunks = dict(chunks or {})
    for name, values in chunks.items():
        if name not in CHUNK_COLUMNS:
            raise ValueError(f"unknown chunk column {name!r} (expected one of {CHUNK_COLUMNS})")
        if len(values) != n:
            raise ValueError(f"{name} must list as many rows as input_ids")
    per_position = {name: [] for name in chunks}
    ids, tids, tlogits, tce, lab = [], [], [], [], []
    shape = None
    names = list(row_ids) if row_ids is not None else list(range(n))
    for row in range(n):
        try:
            _pack_row(row, input_ids, teacher_ids, teacher_logits, teacher_ce, labels, logits_dtype,
                      check_storable_logits, shape, (ids, tids, tlogits, tce, lab), chunks, per_position)
        except ValueError as exc:
            raise ValueError(f"row {names[row]}: {exc}") from None
        shape = tids[-1].shape[1:]
    names = PACKED_COLUMNS + (("labels",) if labels is not None else ()) + tuple(chunks)
    if not ids:
        return {name: [] for name in names}
    ids, tids, tlogits, tce = (np.concatenate(x) for x in (ids, tids, tlogits, tce))
    per_position = {name: np.concatenate(parts) for name, parts in per_position.items()}
    lab = np.concatenate(lab) if labels is not None else None
    total = len(ids)
    stop = total - total % block_size if drop_last else total
    out = {name: [] for name in names}
    for start in range(0, stop, block_size):
        block = slice(start, min(start + block_size, stop))
        out["input_ids"].append(ids[block])
        if lab is not None:
            out["labels"].append(lab[block])
        out["teacher_ids"].append(tids[block])
        out["teacher_logits"].append(tlogits[block])
        metrics = tce[block]
        out["teacher_ce"].append(metrics.mean(axis=0, dtype=np.float64).astype(np.float32)
                                 if metric_level == "sequence" else np.ascontiguousarray(metrics))
        for name, values in per_position.items():
            part = np.ascontiguousarray(values[block])
            if name == "teacher_chunk_span":
                rows = np.arange(part.shape[0])[:, None]
                part = np.where(part <= rows + 1, part, 0).astype(np.int32)
            out[name].append(part)
    return out


def _pack_row(row, input_ids, teacher_ids, teacher_logits, teacher_ce, labels, logits_dtype, check_storable_logits,
              shape, outputs, chunks, per_position):
    """Check row ``row`` and append its arrays to ``outputs`` (ids, tids, tlogits, tce, lab) and to
    ``per_position`` (its chunk columns); ``shape``: [n_teachers, k] of the rows before it (None
    for the first)."""
    ids, tids, tlogits, tce, lab = outputs
    seq = np.asarray(input_ids[row])
    length = len(seq)
    t_ids = _stack_nd(teacher_ids[row], 3, "teacher_ids")
    t_logits = _stack_nd(teacher_logits[row], 3, "teacher_logits").astype(np.float32)
    ce = np.asarray(_stack_nd(teacher_ce[row], None, "teacher_ce"), dtype=np.float32)
    if seq.ndim != 1:
        raise ValueError(f"input_ids must be 1-D, got shape {seq.shape}")
    if t_ids.shape != t_logits.shape or t_ids.shape[0] != length:
        raise ValueError(f"teacher_ids {t_ids.shape} and teacher_logits {t_logits.shape} must both be "
                         f"[L={length}, n_teachers, k]")
    if shape is not None and t_ids.shape[1:] != shape:
        raise ValueError(f"teacher columns have [n_teachers, k] = {t_ids.shape[1:]}, the first row has {shape}")
    n_teachers = t_ids.shape[1]
    if ce.shape == (n_teachers,):
        ce = np.broadcast_to(ce, (length, n_teachers))  # per-sequence metric -> per token
    elif ce.shape != (length, n_teachers):
        raise ValueError(f"teacher_ce must be [{n_teachers}] or [{length}, {n_teachers}], got {ce.shape}")
    if np.isnan(ce).any():
        raise ValueError("teacher_ce contains NaN")
    if logits_dtype is not None:
        check_storable_logits(t_logits, logits_dtype, "teacher_logits")
    if labels is not None:
        row_labels = np.asarray(labels[row])
        if row_labels.shape != seq.shape:
            raise ValueError(f"labels has shape {row_labels.shape}, input_ids {seq.shape}")
        lab.append(row_labels.astype(np.int32))
    for name, values in chunks.items():
        arr = _stack_nd(values[row], 2, name)
        if arr.shape != (length, n_teachers):
            raise ValueError(f"{name} must be [{length}, {n_teachers}], got {arr.shape}")
        per_position[name].append(arr)
    ids.append(seq.astype(np.int32))
    tids.append(t_ids.astype(np.int32))
    tlogits.append(t_logits)
    tce.append(ce)


def pack_sequences(dataset, block_size: int, *, drop_last: bool = True, metric_level: str = "sequence",
                   logits_dtype: str = "float16", batch_size: int = 1000, num_proc: int | None = None,
                   desc: str = "pack"):
    """Pack a ``datasets.Dataset`` (columns of the module docstring) into blocks of ``block_size``.

    A ``labels`` column (e.g. the assistant-only labels of chat data) and the aligned-chunk
    columns of :func:`fusekernels.pipeline.align_step.align_teachers` (``CHUNK_COLUMNS``) are packed
    along; other columns are dropped (they cannot be packed). Returns a ``datasets.Dataset`` whose rows
    :class:`fusekernels.integration.FusionDataCollator` takes directly.
    """
    require("datasets", "pack_sequences")
    from datasets import Array2D, Array3D, Features, List, Value

    _check_options(block_size, metric_level)
    if logits_dtype not in LOGITS_DTYPES:
        raise ValueError(f"logits_dtype must be one of {LOGITS_DTYPES}, got {logits_dtype!r}")
    missing = [c for c in PACKED_COLUMNS if c not in dataset.column_names]
    if missing:
        raise ValueError(f"dataset lacks column(s) {missing}; build them with stack_teachers() "
                         f"(columns: {dataset.column_names})")
    if len(dataset) == 0:
        raise ValueError("dataset is empty")
    first = dataset.with_format("numpy")[0]
    n_teachers, k = np.asarray(first["teacher_ids"]).shape[1:]
    features = Features({
        "input_ids": List(Value("int32")),
        "teacher_ids": Array3D(shape=(None, n_teachers, k), dtype="int32"),
        "teacher_logits": Array3D(shape=(None, n_teachers, k), dtype=logits_dtype),
        "teacher_ce": (List(Value("float32")) if metric_level == "sequence"
                       else Array2D(shape=(None, n_teachers), dtype="float32")),
        **({"labels": List(Value("int32"))} if "labels" in dataset.column_names else {}),
    })
    chunk_columns = [c for c in CHUNK_COLUMNS if c in dataset.column_names]
    for name in chunk_columns:
        features[name] = Array2D(shape=(None, n_teachers), dtype="int32" if name == "teacher_chunk_span" else "float32")
    columns = list(PACKED_COLUMNS) + (["labels"] if "labels" in dataset.column_names else []) + chunk_columns

    def pack_batch(batch, indices):
        check_interrupted()
        out = pack_arrays(batch["input_ids"], batch["teacher_ids"], batch["teacher_logits"], batch["teacher_ce"],
                          block_size, drop_last=drop_last, metric_level=metric_level, labels=batch.get("labels"),
                          chunks={name: batch[name] for name in chunk_columns}, row_ids=indices,
                          logits_dtype=logits_dtype)
        out["teacher_logits"] = [x.astype(logits_dtype) for x in out["teacher_logits"]]
        return out

    from fusekernels import __version__
    from fusekernels._interrupt import check_interrupted
    from fusekernels.fingerprint import json_fingerprint
    from fusekernels.storage import cached_map

    source = dataset.select_columns(columns).with_format("numpy")
    # deterministic, and written to the user cache (never next to the input dataset)
    fingerprint = json_fingerprint(["pack", __version__, source._fingerprint, int(block_size), drop_last,
                                    metric_level, logits_dtype, batch_size])[:16]
    packed = cached_map(source, pack_batch, label="pack", fingerprint=fingerprint, batched=True, with_indices=True,
                        batch_size=batch_size, num_proc=num_proc, remove_columns=columns, features=features, desc=desc)
    return packed.with_format(None)


def _check_options(block_size, metric_level):
    if not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")
    if metric_level not in METRIC_LEVELS:
        raise ValueError(f"metric_level must be one of {METRIC_LEVELS}, got {metric_level!r}")


def _stack_nd(value, ndim, column) -> np.ndarray:
    """numpy view of a (possibly nested-object) array cell; datasets returns nested arrays as
    object arrays of arrays for variable-length dimensions."""
    arr = np.asarray(value)
    if arr.dtype == object:
        arr = np.stack([_stack_nd(v, None, column) for v in arr]) if len(arr) else arr.astype(np.float32)
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{column} must have {ndim} dimensions, got shape {arr.shape}")
    return arr
