"""Top-k transfer from a blending vocabulary into the base vocabulary (FuseLLM's published rule).

Compatible with the published FuseLLM ``transform_step_logits``, "hard" and "soft" vocabulary
alignment, including its byte-level-BPE special case at the first base position. Every string
comparison of the published code is turned once per tokenizer pair into integer tables over
token ids (`build_transfer_tables`); the per-sequence work (`transfer_topk`,
`transfer_topk_batch`) is then native table lookups with no Python call per token.

Semantics kept from the published code, per base position j with aligned blending positions L:
- ``len(L) == 1`` and the step matches (hard: ``a' == b``; soft: also ``map[a'] == b``): the
  blending top-k at position ``L[0]``, each token carried to the base id of its marker-replaced
  string (soft: of ``map[string]``), tokens missing from the base vocabulary skipped, repeated
  base ids kept once (first wins), in the blending top-k order; this can leave 0 entries;
- otherwise the single pair (base id of ``b[j]``, logit 1.0).
Base strings are looked up by their FIRST id when the base vocabulary repeats a string.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fusekernels import _C
from fusekernels.align._validate import check_threads
from fusekernels.align.dtw import Alignment

__all__ = ["TransferTables", "TopKResult", "build_transfer_tables", "transfer_topk", "transfer_topk_batch"]

# Hard: a blending id reaches the base vocabulary only through an identical token; soft: also
# through the vocabulary map (MinED).
TRANSFER_MODES = ("hard", "soft")


@dataclass(frozen=True, eq=False)
class TransferTables:
    """Integer tables for one (blending, base) tokenizer pair. ``x'`` is blending token x with the
    blending marker replaced by the base marker; every base id is the first id of its string and
    -1 means "not in the base vocabulary".

    exact: int32 [V_blend], base id of x'.
    exact_prefixed: int32 [V_blend], base id of base_marker + x' (byte-level-BPE special case at
        the first base position; -1 where it does not apply).
    soft: int32 [V_blend] or None (no vocab_map), base id of vocab_map[x'].
    soft_prefixed: int32 [V_blend] or None, base id of vocab_map[base_marker + x'] when that key
        exists (special case), else -1.
    blend_starts_with_marker: bool [V_blend], x' starts with base_marker.
    base_starts_with_marker: bool [V_base], the base token starts with base_marker.
    base_canonical: int32 [V_base], first base id with the same string as each base id.
    byte_level_blend: the blending tokenizer is byte-level BPE (enables the special case).
    blend_marker / base_marker: the markers the tables were built with (for reference).
    """

    exact: np.ndarray
    exact_prefixed: np.ndarray
    soft: np.ndarray | None
    soft_prefixed: np.ndarray | None
    blend_starts_with_marker: np.ndarray
    base_starts_with_marker: np.ndarray
    base_canonical: np.ndarray
    byte_level_blend: bool
    blend_marker: str
    base_marker: str

    def __post_init__(self):
        """Hand-built tables are checked like built ones: dtypes, one entry per id, ids in range."""
        nb, na = _table_len(self.exact, "exact"), _table_len(self.base_canonical, "base_canonical")
        for name in ("exact", "exact_prefixed", "soft", "soft_prefixed", "base_canonical"):
            arr = getattr(self, name)
            if arr is None and name.startswith("soft"):
                continue
            size = na if name == "base_canonical" else nb
            arr = np.asarray(arr)
            if arr.dtype != np.int32 or arr.shape != (size,):
                raise ValueError(f"{name} has the wrong length or dtype: TransferTables.{name} must be int32 "
                                 f"[{size}], got {arr.dtype} {arr.shape}")
            if arr.size and (arr.min() < (0 if name == "base_canonical" else -1) or arr.max() >= na):
                raise ValueError(f"TransferTables.{name} holds base ids outside [-1, {na}) ({na} base tokens)")
        if (self.soft is None) != (self.soft_prefixed is None):
            raise ValueError("TransferTables.soft and soft_prefixed must both be given or both be None")
        for name, size in (("blend_starts_with_marker", nb), ("base_starts_with_marker", na)):
            arr = np.asarray(getattr(self, name))
            if arr.dtype != np.bool_ or arr.shape != (size,):
                raise ValueError(f"{name} has the wrong length or dtype: TransferTables.{name} must be bool "
                                 f"[{size}], got {arr.dtype} {arr.shape}")
        if not isinstance(self.byte_level_blend, bool):
            raise TypeError(f"TransferTables.byte_level_blend must be bool, got {type(self.byte_level_blend).__name__}")

    @property
    def blend_vocab_size(self) -> int:
        return len(self.exact)

    @property
    def base_vocab_size(self) -> int:
        return len(self.base_canonical)


@dataclass(frozen=True, eq=False)
class TopKResult:
    """Aligned top-k of one sequence in the base vocabulary.

    ids: int32 [m, k], base ids, -1 after the first ``counts[j]`` entries of row j.
    logits: float32 [m, k], the blending logits (1.0 for the one-hot fallback), -inf padding.
    counts: int32 [m], number of valid entries per base position (0..k).
    matched: bool [m] or None, True where the position got the blending distribution (a 1:1
        step that matched; its count can still be 0 when no top-k token reaches the base
        vocabulary), False for the one-hot fallback. Set by `transfer_topk`.
    """

    ids: np.ndarray
    logits: np.ndarray
    counts: np.ndarray
    matched: np.ndarray | None = None

    def to_lists(self) -> tuple[list[list[int]], list[list[float]]]:
        """Per base position, the valid (ids, logits) as Python lists (the published format)."""
        ids, logits = [], []
        for row_ids, row_logits, c in zip(self.ids.tolist(), self.logits.tolist(), self.counts.tolist()):
            ids.append(row_ids[:c])
            logits.append(row_logits[:c])
        return ids, logits


def _table_len(arr, name: str) -> int:
    arr = np.asarray(arr)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"TransferTables.{name} must be a non-empty 1-D array, got shape {arr.shape}")
    return arr.shape[0]


def _check_vocab(vocab: object, name: str) -> Sequence[str]:
    if isinstance(vocab, (str, bytes)) or not isinstance(vocab, Sequence):
        raise TypeError(f"{name} must be a sequence of token strings indexed by id")
    if len(vocab) == 0:
        raise ValueError(f"{name} must not be empty")
    for i, token in enumerate(vocab):
        if not isinstance(token, str):
            raise TypeError(f"{name}[{i}] must be str, got {type(token).__name__}")
    return vocab


def build_transfer_tables(blend_vocab: Sequence[str], base_vocab: Sequence[str], *, blend_marker: str,
                          base_marker: str, vocab_map: Mapping[str, str] | None = None,
                          byte_level_blend: bool = False) -> TransferTables:
    """Precomputes the tables of one tokenizer pair (cache them: O(V_blend + V_base) Python work).

    blend_vocab / base_vocab: token strings indexed by id (``convert_ids_to_tokens(range(V))``).
    blend_marker / base_marker: the tokenizers' space markers (``"▁"``, ``"Ġ"``; ``""`` = none,
        an empty blend_marker means no replacement).
    vocab_map: the MinED blending -> base map keyed by x' (needed for mode "soft"); it must have
        a key for every x' (the published code raises KeyError otherwise).
    byte_level_blend: the blending tokenizer is byte-level BPE (GPT-2, GPT-NeoX, MPT class).
    """
    _check_vocab(blend_vocab, "blend_vocab")
    _check_vocab(base_vocab, "base_vocab")
    for name, marker in (("blend_marker", blend_marker), ("base_marker", base_marker)):
        if not isinstance(marker, str):
            raise TypeError(f"{name} must be str, got {type(marker).__name__}")
    if vocab_map is not None and not isinstance(vocab_map, Mapping):
        raise TypeError(f"vocab_map must be a mapping str -> str, got {type(vocab_map).__name__}")

    index: dict[str, int] = {}
    for i, token in enumerate(base_vocab):
        index.setdefault(token, i)
    primes = [t.replace(blend_marker, base_marker) for t in blend_vocab] if blend_marker else list(blend_vocab)
    blend_starts = [x.startswith(base_marker) for x in primes]
    special = byte_level_blend and bool(base_marker)

    def ids(strings) -> np.ndarray:
        return np.fromiter((index.get(s, -1) for s in strings), dtype=np.int32, count=len(primes))

    def prefixed(lookup) -> np.ndarray:
        if not special:
            return np.full(len(primes), -1, dtype=np.int32)
        return np.fromiter((-1 if starts else lookup(base_marker + x) for x, starts in zip(primes, blend_starts)),
                           dtype=np.int32, count=len(primes))

    soft = soft_prefixed = None
    if vocab_map is not None:
        missing = [x for x in primes if x not in vocab_map]
        if missing:
            raise ValueError(f"vocab_map has no key for {len(missing)} marker-replaced blending tokens, "
                             f"e.g. {missing[0]!r}; it must cover the whole blending vocabulary")
        bad = next(((x, vocab_map[x]) for x in primes if not isinstance(vocab_map[x], str)), None)
        if bad is not None:
            raise TypeError(f"vocab_map[{bad[0]!r}] = {bad[1]!r}: the map's values must be base token strings "
                            "(the published {x': base_token} format)")
        soft = ids(vocab_map[x] for x in primes)  # (a value outside the base vocabulary never matches, as published)
        soft_prefixed = prefixed(lambda key: index.get(vocab_map[key], -1) if key in vocab_map else -1)

    return TransferTables(
        exact=ids(primes),
        exact_prefixed=prefixed(lambda key: index.get(key, -1)),
        soft=soft,
        soft_prefixed=soft_prefixed,
        blend_starts_with_marker=np.array(blend_starts, dtype=bool).reshape(-1),
        base_starts_with_marker=np.fromiter((t.startswith(base_marker) for t in base_vocab), dtype=bool,
                                            count=len(base_vocab)),
        base_canonical=np.fromiter((index[t] for t in base_vocab), dtype=np.int32, count=len(base_vocab)),
        byte_level_blend=bool(byte_level_blend),
        blend_marker=blend_marker,
        base_marker=base_marker,
    )


def _to_numpy(x: object) -> np.ndarray:
    if type(x).__module__.split(".")[0] == "torch":  # CPU copy without importing torch here
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def _ids(x: object, name: str, ndim: int) -> np.ndarray:
    """int32 or int64 C-contiguous ids (the native side narrows int64 with a range check)."""
    arr = _to_numpy(x)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}")
    if arr.dtype not in (np.int32, np.int64):
        if arr.dtype == np.uint64 and arr.size and arr.max() > np.iinfo(np.int64).max:
            raise ValueError(f"{name} holds values outside the int32 range")
        arr = arr.astype(np.int64)
    return np.ascontiguousarray(arr)


def _positions(x: object, name: str) -> np.ndarray:
    """int32 C-contiguous 1-D positions (alignment arrays)."""
    arr = _ids(x, name, 1)
    if arr.dtype != np.int32:
        if arr.size and (arr.min() < 0 or arr.max() > np.iinfo(np.int32).max):
            raise ValueError(f"{name} holds values outside [0, 2**31)")
        arr = arr.astype(np.int32)
    return arr


def _float32(x: object, name: str) -> np.ndarray:
    arr = _to_numpy(x)
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape [n, k], got shape {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if np.isposinf(arr).any():  # (NaN is rejected natively) +inf would win every softmax
        raise ValueError(f"{name} contains +inf (logits must be finite; -inf marks padding)")
    return arr


def _prepare(item: Sequence[object]) -> tuple[np.ndarray, ...]:
    if len(item) != 5:
        raise ValueError("each item must be (base_ids, blend_ids, alignment, topk_ids, topk_logits)")
    base_ids, blend_ids, alignment, topk_ids, topk_logits = item
    if not isinstance(alignment, Alignment):
        raise TypeError(f"alignment must be an Alignment, got {type(alignment).__name__}")
    offsets, indices = (_positions(a, f"alignment.{name}") for a, name in
                        ((alignment.offsets, "offsets"), (alignment.indices, "indices")))
    return (_ids(base_ids, "base_ids", 1), _ids(blend_ids, "blend_ids", 1), offsets, indices,
            _ids(topk_ids, "topk_ids", 2), _float32(topk_logits, "topk_logits"))


def _run(items: list[tuple[np.ndarray, ...]], tables: TransferTables, mode: str, threads: int,
         name_items: bool) -> list[TopKResult]:
    if not isinstance(tables, TransferTables):
        raise TypeError(f"tables must be a TransferTables, got {type(tables).__name__}")
    if mode not in TRANSFER_MODES:
        raise ValueError(f"mode must be one of {TRANSFER_MODES}, got {mode!r}")
    if mode == "soft" and tables.soft is None:
        raise ValueError("mode='soft' needs tables built with a vocab_map (build_transfer_tables(..., vocab_map=...))")
    threads = check_threads(threads)
    raw = _C.transfer_topk_batch(
        items, tables.exact, tables.exact_prefixed, tables.soft, tables.soft_prefixed,
        tables.blend_starts_with_marker.view(np.uint8), tables.base_starts_with_marker.view(np.uint8),
        tables.base_canonical, tables.byte_level_blend, mode, threads, name_items)
    return [TopKResult(ids, logits, counts, matched) for ids, logits, counts, matched in raw]


def transfer_topk(base_ids, blend_ids, alignment: Alignment, topk_ids, topk_logits, tables: TransferTables, *,
                  mode: str = "hard") -> TopKResult:
    """Carries one sequence's blending top-k into the base vocabulary along `alignment`.

    base_ids: int [m] base token ids; blend_ids: int [n] blending token ids (same text).
    alignment: `Alignment` with m base positions over blending positions [0, n) (`dtw_align`).
    topk_ids: int [n, k] blending ids; topk_logits: float [n, k] (row i predicts token i + 1).
    numpy arrays or CPU torch tensors; any integer / floating dtype (logits become float32).
    mode: "hard" (exact string match) or "soft" (also through the tables' vocab_map).
    Raises ValueError naming the argument for ids outside the tables, an alignment that does not
    fit the lengths, NaN logits; TypeError for non-integer ids or non-float logits.
    """
    return _run([_prepare((base_ids, blend_ids, alignment, topk_ids, topk_logits))], tables, mode, 1, False)[0]


def transfer_topk_batch(items: Sequence[tuple], tables: TransferTables, *, mode: str = "hard",
                        threads: int = 0) -> list[TopKResult]:
    """`transfer_topk` over many sequences in native threads (GIL released).

    items: sequence of ``(base_ids, blend_ids, alignment, topk_ids, topk_logits)`` tuples, as
    the arguments of `transfer_topk`; error messages start with the item (``items[p]``).
    threads: 0 = all cores; results do not depend on it.
    """
    prepared = []
    for p, item in enumerate(items):
        try:
            prepared.append(_prepare(item))
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"items[{p}]: {exc}") from None
    return _run(prepared, tables, mode, threads, True)
