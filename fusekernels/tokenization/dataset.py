"""Align a whole ``datasets.Dataset`` of teacher outputs onto the base tokenization.

Expected input columns (one row per text; names configurable through ``columns``):

==================  =========================================  ==================================
key                 default column                              content
==================  =========================================  ==================================
``base_ids``        ``input_ids``                               int [m], base token ids
``blend_ids``       ``blend_input_ids``                         int [n], blending token ids
``topk_ids``        ``blend_topk_ids``                          int [n, k], teacher top-k ids
``topk_logits``     ``blend_topk_logits``                       float [n, k], their logits
``metric_ce``       ``blend_metric_ce``                         float, the teacher's mean CE
``text``            (optional, e.g. ``text``)                   str, resolves SPM dummy prefixes
==================  =========================================  ==================================

Added columns (``prefix`` default ``"aligned"``): ``{prefix}_topk_ids`` int32 ``Array2D`` [m, k]
(padding -1), ``{prefix}_topk_logits`` float16 or float32 ``Array2D`` [m, k] (padding -inf) and
``{prefix}_metric_ce`` float32 (the teacher's metric, carried along unchanged, as published);
with ``return_mask=True`` also ``{prefix}_matched`` bool [m]: True where the position got the
teacher's distribution, False where it got the one-hot fallback or an empty list (the
aligners' ``return_mask`` output).
Rows are stored as numpy arrays, never as Python float lists. Work runs in
``Dataset.map(batched=True, num_proc=...)`` with the usual progress bar, on Arrow batches: with
``method="byte_span"`` a whole batch is one native call (flat ids and row offsets straight from
the Arrow columns, :func:`~fusekernels.tokenization.batch.byte_span_align_flat`), with results
identical to :func:`byte_span_align` row by row; the compatible methods run row by row. The
per-pair tables are built once in the calling process and shipped to the workers. The map's
fingerprint is deterministic (content fingerprints of the tokenizers and options), and for a
dataset backed by files its result goes to the user cache folder
(:func:`fusekernels.storage.map_cache_file`), never next to the input; an identical later run
reuses it.
"""
from __future__ import annotations

import re

import numpy as np

from .._optional import require
from .profile import as_profile
from .registry import ALIGNMENT_MODES

__all__ = ["align_dataset", "DEFAULT_COLUMNS"]

# Storage dtype of aligned / extracted top-k logits (float16 as published).
LOGITS_DTYPES = ("float16", "float32")
DEFAULT_COLUMNS = {
    "base_ids": "input_ids",
    "blend_ids": "blend_input_ids",
    "topk_ids": "blend_topk_ids",
    "topk_logits": "blend_topk_logits",
    "metric_ce": "blend_metric_ce",
    "text": None,
}


def _fit_width(ids: np.ndarray, logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad (-1 / -inf) or cut the [m, k'] result to the stored width k."""
    if ids.shape[1] == k:
        return ids, logits
    if ids.shape[1] > k:
        return ids[:, :k], logits[:, :k]
    pad = k - ids.shape[1]
    return (np.pad(ids, ((0, 0), (0, pad)), constant_values=-1),
            np.pad(logits, ((0, 0), (0, pad)), constant_values=-np.inf))


def _matrix(x) -> np.ndarray:
    """[n, k] array from a stored row (list of lists, or numpy object array of rows)."""
    if isinstance(x, np.ndarray) and x.dtype == object:
        return np.stack(x)
    return np.asarray(x)


def _per_row(table, *, base, blend, mode, tables, columns, k, match, threads, check, rows=None):
    """The row-by-row path (every mode; ragged top-k rows; the error messages of bad rows:
    ``row N:``, N from ``rows``, the batch's row numbers in its dataset, else the position in the
    batch). Returns the flat ``(ids [M, k], logits float32 [M, k], matched [M])``."""
    texts = None
    if columns.get("text") and mode.reads_text is not None:
        texts = table.column(columns["text"]).to_pylist()
    names = list(rows) if rows is not None else list(range(table.num_rows))
    rows = [(np.asarray(b), np.asarray(a), _matrix(tid), _matrix(tlg))
            for b, a, tid, tlg in zip(*(table.column(columns[c]).to_pylist()
                                        for c in ("base_ids", "blend_ids", "topk_ids", "topk_logits")))]
    try:
        results = mode.align_rows(rows, base, blend, tables=tables, texts=texts, match=match, check=check,
                                  threads=threads)
    except ValueError as exc:  # "rows[i]: ..." (or "items[i]: ...") -> the row's number in its dataset
        found = re.match(r"(?:rows|items)\[(\d+)\]: ", str(exc))
        if not found:
            raise
        raise ValueError(f"row {names[int(found.group(1))]}: {str(exc)[found.end():]}") from None
    fitted = [_fit_width(result.ids, result.logits, k) for result, _ in results]
    if not fitted:
        return np.zeros((0, k), np.int32), np.zeros((0, k), np.float32), np.zeros(0, bool)
    return (np.concatenate([ids for ids, _ in fitted]).astype(np.int32, copy=False),
            np.concatenate([logits for _, logits in fitted]).astype(np.float32, copy=False),
            np.concatenate([np.asarray(mask, dtype=bool) for _, mask in results]))


def align_arrow_batch(table, *, base, blend, method, tables, columns, k, match="span", threads=1, check="length",
                      rows=None):
    """Align one Arrow batch (a ``pyarrow.Table`` with the input columns of the module docstring);
    ``rows``: the batch's row numbers in its dataset, named by the error of a bad row.

    ``method`` names an entry of :data:`~fusekernels.tokenization.registry.ALIGNMENT_MODES`;
    ``tables`` is its ``build_tables`` result. Batches whose top-k rows are all [n_r, k'] go
    through the mode's whole-batch path when it has one (byte-span: one native call,
    :func:`~fusekernels.tokenization.batch.byte_span_align_flat`); other inputs row by row.
    Returns ``(ids int32 [M, k], logits float32 [M, k], matched bool [M], offsets int64 [R + 1])``
    over the M base positions of the R rows."""
    from .batch import arrow_lists, arrow_matrix

    mode = ALIGNMENT_MODES.get_entry(method)
    b, b_off = arrow_lists(table.column(columns["base_ids"]))
    if mode.align_flat is not None:
        a, a_off = arrow_lists(table.column(columns["blend_ids"]))
        tid = arrow_matrix(table.column(columns["topk_ids"]))
        tlg = arrow_matrix(table.column(columns["topk_logits"]))
        if (tid is not None and tlg is not None and np.array_equal(tid[1], a_off) and np.array_equal(tlg[1], a_off)
                and tid[0].shape == tlg[0].shape):
            texts = None
            if columns.get("text") and mode.texts_needed(base, blend):
                texts = table.column(columns["text"]).to_pylist()
            try:
                ids, logits, matched = mode.align_flat(b, b_off, a, a_off, tid[0], tlg[0], base, blend,
                                                       id_map=tables, texts=texts, match=match, check=check,
                                                       k=k, threads=threads)
            except ValueError:
                pass  # the per-row path below raises the per-row message (no "rows[r]" prefix)
            else:
                return ids, logits, matched, b_off
    ids, logits, matched = _per_row(table, base=base, blend=blend, mode=mode, tables=tables, columns=columns,
                                    k=k, match=match, threads=threads, check=check, rows=rows)
    return ids, logits, matched, b_off


def _align_batch(table, indices=None, *, base, blend, method, tables, columns, prefix, logits_dtype, k, match,
                 threads, check="length", return_mask=False):
    import pyarrow as pa

    from .batch import list_array, nested_array

    ids, logits, matched, offsets = align_arrow_batch(table, base=base, blend=blend, method=method, tables=tables,
                                                      columns=columns, k=k, match=match, threads=threads,
                                                      check=check, rows=indices)
    metric = table.column(columns["metric_ce"]).to_numpy().astype(np.float32)
    out = {f"{prefix}_topk_ids": nested_array(ids, offsets),
           f"{prefix}_topk_logits": nested_array(logits.astype(logits_dtype, copy=False), offsets),
           f"{prefix}_metric_ce": pa.array(metric)}
    if return_mask:
        out[f"{prefix}_matched"] = list_array(matched, offsets)
    for name, column in out.items():
        where = table.schema.get_field_index(name)
        table = table.set_column(where, name, column) if where >= 0 else table.append_column(name, column)
    return table


def _restore_format(result, dataset, added):
    """``result`` in ``dataset``'s output format (the map itself runs on Arrow batches)."""
    fmt = dataset.format
    columns = fmt.get("columns")
    if columns is not None:
        columns = list(columns) + [c for c in added if c not in columns]
    return result.with_format(fmt.get("type"), columns=columns, output_all_columns=fmt.get("output_all_columns", False),
                              **(fmt.get("format_kwargs") or {}))


def align_dataset(dataset, base, blend, *, method: str = "byte_span", match: str = "span", k: int | None = None,
                  vocab_map=None,
                  columns: dict | None = None, prefix: str = "aligned", logits_dtype: str = "float16",
                  batch_size: int = 64, num_proc: int | None = None, desc: str | None = None,
                  check: str = "length", return_mask: bool = False, threads: int | None = None):
    """Aligns every row's teacher top-k onto the base tokenization (see the module docstring).

    Args:
        dataset: a ``datasets.Dataset`` with the input columns.
        base: :class:`TokenizerProfile` (or tokenizer) of the base model.
        blend: :class:`TokenizerProfile` (or tokenizer) of the blending model.
        method: an alignment mode of :data:`~fusekernels.tokenization.registry.ALIGNMENT_MODES`:
            ``"byte_span"`` (default), ``"compat_hard"`` or ``"compat_soft"`` (published), or one
            registered there.
        match: byte-span rule, ``"span"`` or ``"end"`` (see ``byte_span_positions``).
        k: top-k width of the stored arrays (default: taken from the first row).
        vocab_map: soft-mode map (default: the MinED map of ``build_vocab_map``).
        columns: overrides of :data:`DEFAULT_COLUMNS`.
        logits_dtype: ``"float16"`` (as published) or ``"float32"`` (``LOGITS_DTYPES``).
        batch_size: rows per ``Dataset.map`` batch.
        num_proc: worker processes of ``Dataset.map`` (None: this process).
        desc: progress-bar label of ``Dataset.map``.
        check: how the aligners verify that both sequences of a row cover the same text
            (``"length"`` default, ``"bytes"``, ``"prefix"``, ``"none"``; see ``check_same_text``).
        return_mask: also add the ``{prefix}_matched`` column (see the module docstring).
        threads: native threads per batch (default: all cores, 1 with ``num_proc > 1``).
    Returns:
        a new ``Dataset`` with the three (four with ``return_mask``) added columns.
    """
    require("datasets", "align_dataset")
    import datasets

    from .byte_span import CHECKS, MATCH_RULES

    mode = ALIGNMENT_MODES.get_entry(method)
    if match not in MATCH_RULES:
        raise ValueError(f"match must be one of {MATCH_RULES}, got {match!r}")
    if check not in CHECKS:
        raise ValueError(f"check must be one of {CHECKS}, got {check!r}")
    if logits_dtype not in LOGITS_DTYPES:
        raise ValueError(f"logits_dtype must be one of {LOGITS_DTYPES}, got {logits_dtype!r}")
    base, blend = as_profile(base, "base"), as_profile(blend, "blend")
    cols = dict(DEFAULT_COLUMNS)
    if columns:
        unknown = set(columns) - set(DEFAULT_COLUMNS)
        if unknown:
            raise ValueError(f"columns has unknown keys {sorted(unknown)}; known: {sorted(DEFAULT_COLUMNS)}")
        cols.update(columns)
    missing = [name for key, name in cols.items() if name and name not in dataset.column_names]
    if missing:
        raise ValueError(f"dataset lacks column(s) {missing}; has {dataset.column_names}")
    if len(dataset) == 0:
        raise ValueError("dataset must not be empty")
    if k is None:
        k = len(dataset[0][cols["topk_ids"]][0])
    tables = mode.build_tables(base, blend, vocab_map)
    features = dataset.features.copy()
    features[f"{prefix}_topk_ids"] = datasets.Array2D(shape=(None, k), dtype="int32")
    features[f"{prefix}_topk_logits"] = datasets.Array2D(shape=(None, k), dtype=logits_dtype)
    features[f"{prefix}_metric_ce"] = datasets.Value("float32")
    if return_mask:
        features[f"{prefix}_matched"] = datasets.List(datasets.Value("bool"))
    from fusekernels.storage import cached_map

    from ..fingerprint import map_fingerprint, profile_fingerprint, vocab_map_fingerprint

    fingerprint = map_fingerprint(dataset, (method, match, k, prefix, logits_dtype, sorted(cols.items()),
                                         profile_fingerprint(base), profile_fingerprint(blend),
                                         vocab_map_fingerprint(vocab_map) if mode.uses_vocab_map else None,
                                         return_mask, check))
    added = list(features)[len(dataset.features):]
    result = cached_map(
        dataset.with_format("arrow"), _align_batch, label="align", fingerprint=fingerprint,
        batched=True, with_indices=True, batch_size=batch_size, num_proc=num_proc, features=features,
        fn_kwargs=dict(base=base, blend=blend, method=method, tables=tables, columns=cols, prefix=prefix,
                       logits_dtype=np.dtype(logits_dtype), k=k, match=match,
                       threads=threads if threads is not None else (1 if num_proc and num_proc > 1 else 0),
                       check=check, return_mask=return_mask),
        desc=desc or f"aligning top-k ({method})",
    )
    return _restore_format(result, dataset, added)
