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
``{prefix}_metric_ce`` float32 (the teacher's metric, carried along unchanged as in the spec);
with ``return_mask=True`` also ``{prefix}_matched`` bool [m]: True where the position got the
teacher's distribution, False where it got the one-hot fallback or an empty list (the
aligners' ``return_mask`` output).
Rows are stored as numpy arrays, never as Python float lists. Work runs in
``Dataset.map(batched=True, num_proc=...)`` with the usual progress bar; the per-pair tables are
built once in the calling process and shipped to the workers.
"""
from __future__ import annotations

import hashlib

import numpy as np

from .profile import TokenizerProfile

__all__ = ["align_dataset", "DEFAULT_COLUMNS"]

DEFAULT_COLUMNS = {
    "base_ids": "input_ids",
    "blend_ids": "blend_input_ids",
    "topk_ids": "blend_topk_ids",
    "topk_logits": "blend_topk_logits",
    "metric_ce": "blend_metric_ce",
    "text": None,
}
_METHODS = ("byte_span", "compat_hard", "compat_soft")


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


def _align_batch(batch, *, base, blend, method, tables, columns, prefix, logits_dtype, k, match, threads,
                 check="length", return_mask=False):
    from .byte_span import byte_span_align
    from .compat import compat_align_batch

    texts = batch[columns["text"]] if columns.get("text") else None
    rows = [(np.asarray(b), np.asarray(a), _matrix(tid), _matrix(tlg))
            for b, a, tid, tlg in zip(batch[columns["base_ids"]], batch[columns["blend_ids"]],
                                      batch[columns["topk_ids"]], batch[columns["topk_logits"]])]
    if method == "byte_span":
        results = [byte_span_align(*row, base, blend, id_map=tables, match=match, check=check, return_mask=return_mask,
                                   text=None if texts is None else texts[r]) for r, row in enumerate(rows)]
    else:
        results = compat_align_batch(rows, base, blend, mode=method.split("_", 1)[1], tables=tables, threads=threads,
                                     check=check, return_mask=return_mask)
    out_ids, out_logits, out_masks = [], [], []
    for result in results:
        if return_mask:
            result, mask = result
            out_masks.append(np.asarray(mask, dtype=bool))
        ids, logits = _fit_width(result.ids, result.logits, k)
        out_ids.append(ids)
        out_logits.append(logits.astype(logits_dtype))
    metric = np.asarray(batch[columns["metric_ce"]], dtype=np.float32)
    out = {f"{prefix}_topk_ids": out_ids, f"{prefix}_topk_logits": out_logits, f"{prefix}_metric_ce": metric}
    if return_mask:
        out[f"{prefix}_matched"] = out_masks
    return out


def _fingerprint(dataset, parts) -> str:
    h = hashlib.sha256(str(getattr(dataset, "_fingerprint", id(dataset))).encode())
    for p in parts:
        h.update(repr(p).encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:16]


def align_dataset(dataset, base, blend, *, method: str = "byte_span", match: str = "span", k: int | None = None,
                  vocab_map=None,
                  columns: dict | None = None, prefix: str = "aligned", logits_dtype: str = "float16",
                  batch_size: int = 64, num_proc: int | None = None, desc: str | None = None,
                  check: str = "length", return_mask: bool = False):
    """Aligns every row's teacher top-k onto the base tokenization (see the module docstring).

    Args:
        dataset: a ``datasets.Dataset`` with the input columns.
        base, blend: :class:`TokenizerProfile` (or tokenizers) of the base and blending model.
        method: ``"byte_span"`` (default), ``"compat_hard"`` or ``"compat_soft"`` (published).
        match: byte-span rule, ``"span"`` or ``"end"`` (see ``byte_span_positions``).
        k: top-k width of the stored arrays (default: taken from the first row).
        vocab_map: soft-mode map (default: the spec's MinED map).
        columns: overrides of :data:`DEFAULT_COLUMNS`.
        logits_dtype: ``"float16"`` (as published) or ``"float32"``.
        batch_size, num_proc, desc: passed to ``Dataset.map``.
        check: how the aligners verify that both sequences of a row cover the same text
            (``"length"`` default, ``"bytes"``, ``"prefix"``, ``"none"``; see ``check_same_text``).
        return_mask: also add the ``{prefix}_matched`` column (see the module docstring).
    Returns:
        a new ``Dataset`` with the three (four with ``return_mask``) added columns.
    """
    import datasets

    from .byte_span import CHECKS, build_byte_span_map
    from .compat import compat_tables
    from .vocab_map import _profile

    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if match not in ("span", "end"):
        raise ValueError(f"match must be 'span' or 'end', got {match!r}")
    if check not in CHECKS:
        raise ValueError(f"check must be one of {CHECKS}, got {check!r}")
    if logits_dtype not in ("float16", "float32"):
        raise ValueError(f"logits_dtype must be 'float16' or 'float32', got {logits_dtype!r}")
    base, blend = _profile(base, "base"), _profile(blend, "blend")
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
    if method == "byte_span":
        tables = build_byte_span_map(base, blend)
    else:
        tables = compat_tables(base, blend, mode=method.split("_", 1)[1], vocab_map=vocab_map)
    features = dataset.features.copy()
    features[f"{prefix}_topk_ids"] = datasets.Array2D(shape=(None, k), dtype="int32")
    features[f"{prefix}_topk_logits"] = datasets.Array2D(shape=(None, k), dtype=logits_dtype)
    features[f"{prefix}_metric_ce"] = datasets.Value("float32")
    if return_mask:
        features[f"{prefix}_matched"] = datasets.List(datasets.Value("bool"))
    fingerprint = _fingerprint(dataset, (method, match, k, prefix, logits_dtype, sorted(cols.items()), base.name,
                                         base.vocab_size, blend.name, blend.vocab_size, id(vocab_map))
                               + (("return_mask",) if return_mask else ()) + ((check,) if check != "length" else ()))
    return dataset.map(
        _align_batch, batched=True, batch_size=batch_size, num_proc=num_proc, features=features,
        fn_kwargs=dict(base=base, blend=blend, method=method, tables=tables, columns=cols, prefix=prefix,
                       logits_dtype=np.dtype(logits_dtype), k=k, match=match,
                       threads=1 if num_proc and num_proc > 1 else 0, check=check, return_mask=return_mask),
        new_fingerprint=fingerprint, desc=desc or f"aligning top-k ({method})",
    )
