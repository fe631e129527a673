"""The blending -> base vocabulary map of FuseLLM's soft alignment (MinED), over the native MinED search.

For every blending token x (in id order) ``x'`` is x with the blending space marker replaced by
the base marker; ``x'`` maps to itself when it is a base token, else to the base token at the
smallest Levenshtein distance (code points, markers kept), ties to the lowest base id. The map
is keyed by ``x'``. ``mode="co_occurrence"`` re-decides the ties: among the base tokens at the
minimum distance, the one whose co-occurrence row (window of 5 tokens, on a corpus tokenized by
both tokenizers, columns = tokens common to both vocabularies) has the highest cosine similarity
with the blending token's row; no co-occurrence evidence keeps the MinED choice.

Storage: :meth:`VocabMap.save_npz` (int32 arrays + vocabulary fingerprints, compact) and
:meth:`VocabMap.save_json` (the published ``{x': base_token_string}`` JSON).
"""
from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ..fingerprint import tokens_fingerprint
from .profile import TokenizerProfile, as_profile

__all__ = ["VocabMap", "build_vocab_map", "marker_replaced", "cooccurrence_counts"]

_WINDOW = 5
# MinED map, or MinED with the co-occurrence refinement of ties (published).
VOCAB_MAP_MODES = ("default", "co_occurrence")
_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()


def marker_replaced(blend: TokenizerProfile, base: TokenizerProfile) -> list[str]:
    """``x'`` for every blending id (no replacement when the blending marker is empty)."""
    if not blend.marker:
        return list(blend.tokens)
    bm, tm = blend.marker, base.marker
    return [t.replace(bm, tm) for t in blend.tokens]


@dataclass(eq=False)
class VocabMap:
    """Blending -> base map of one tokenizer pair.

    Attributes:
        keys: ``list[str]`` [V_blend], ``x'`` of every blending id.
        base_ids: int32 [V_blend], the base id each blending id maps to.
        distances: int32 [V_blend], Levenshtein distance of ``x'`` to that base token (0 = exact;
            -1 when unknown, e.g. loaded from JSON).
        base_tokens: the base vocabulary strings (to turn ids back into the published strings).
        method: ``"default"`` or ``"co_occurrence"``.
    """

    keys: list
    base_ids: np.ndarray
    distances: np.ndarray
    base_tokens: list
    method: str = "default"

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def exact_rate(self) -> float:
        return float((self.distances == 0).mean()) if len(self.distances) else 0.0

    def to_dict(self) -> dict[str, str]:
        """The published map ``{x': base token string}`` (later duplicate keys agree with earlier)."""
        bt = self.base_tokens
        return {k: bt[i] for k, i in zip(self.keys, self.base_ids.tolist())}

    # ------------------------------------------------------------------ persistence
    def save_npz(self, path) -> None:
        """Compact binary form: int32 ``base_ids`` / ``distances`` plus vocabulary fingerprints
        (written atomically: an interrupted save leaves no partial file)."""
        from fusekernels.storage import atomic_file

        with atomic_file(path) as fh:
            np.savez_compressed(fh, base_ids=self.base_ids.astype(np.int32),
                                distances=self.distances.astype(np.int32),
                                keys_fingerprint=np.array(tokens_fingerprint(self.keys)),
                                base_fingerprint=np.array(tokens_fingerprint(self.base_tokens)),
                                method=np.array(self.method))

    @classmethod
    def load_npz(cls, path, base, blend) -> "VocabMap":
        """Load :meth:`save_npz` output.

        Raises ``ValueError`` if the tokenizers are not the ones it was built for, and
        :class:`fusekernels.storage.DamagedFileError` (a ``ValueError``) naming ``path`` when the
        file is truncated, corrupted, lacks an array, or holds ids that do not fit the vocabularies.
        """
        import zipfile
        import zlib

        from fusekernels.storage import DamagedFileError

        base, blend = as_profile(base, "base"), as_profile(blend, "blend")
        keys = marker_replaced(blend, base)
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = [n for n in _NPZ_ARRAYS if n not in data.files]
                if missing:
                    raise DamagedFileError(path, f"arrays {missing} missing")
                same = (str(data["keys_fingerprint"]) == tokens_fingerprint(keys)
                        and str(data["base_fingerprint"]) == tokens_fingerprint(base.tokens))
                ids, dist = np.asarray(data["base_ids"]), np.asarray(data["distances"])
                method = str(data["method"])
        except (OSError, EOFError, zlib.error, zipfile.BadZipFile, KeyError, ValueError) as exc:
            if isinstance(exc, (FileNotFoundError, DamagedFileError)):
                raise
            raise DamagedFileError(path, f"{type(exc).__name__}: {exc}") from None
        if not same:
            raise ValueError(f"{path}: vocabulary map was built for other tokenizers")
        _check_ids(path, ids, dist, len(keys), base.vocab_size)
        return cls(keys=keys, base_ids=ids.astype(np.int32), distances=dist.astype(np.int32),
                   base_tokens=base.tokens, method=method)

    def save_json(self, path) -> None:
        """The published JSON format ``{x': base_token_string}`` (written atomically)."""
        from fusekernels.storage import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=False))

    @classmethod
    def load_json(cls, path, base, blend) -> "VocabMap":
        """Load a published ``{x': base_token_string}`` JSON; every x' must be a key and every
        value a base token (ValueError otherwise; :class:`fusekernels.storage.DamagedFileError`
        when the file is not valid JSON or not an object). Distances are unknown (-1) except
        exact ones."""
        from fusekernels.storage import DamagedFileError

        base, blend = as_profile(base, "base"), as_profile(blend, "blend")
        try:
            with open(path, encoding="utf-8") as fh:
                mapping = json.load(fh)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DamagedFileError(path, f"not valid UTF-8 JSON ({exc})") from None
        if not isinstance(mapping, dict):
            raise DamagedFileError(path, f"expected a JSON object {{token: base token}}, got a JSON "
                                         f"{type(mapping).__name__}")
        keys = marker_replaced(blend, base)
        index = base.token_to_id
        ids = np.empty(len(keys), dtype=np.int32)
        dist = np.full(len(keys), -1, dtype=np.int32)
        for i, key in enumerate(keys):
            value = mapping.get(key)
            if value is None:
                raise ValueError(f"{path}: no entry for blending token {key!r} (id {i})")
            if not isinstance(value, str) or value not in index:
                raise ValueError(f"{path}: value {value!r} for {key!r} is not a base token")
            ids[i] = index[value]
            if value == key:
                dist[i] = 0
        return cls(keys=keys, base_ids=ids, distances=dist, base_tokens=base.tokens, method="json")


_NPZ_ARRAYS = ("base_ids", "distances", "keys_fingerprint", "base_fingerprint", "method")


def _check_ids(path, ids: np.ndarray, dist: np.ndarray, n_keys: int, base_vocab: int) -> None:
    """A loaded map must have one in-range base id and one distance (>= -1) per blending token."""
    from fusekernels.storage import DamagedFileError

    for name, arr in (("base_ids", ids), ("distances", dist)):
        if arr.shape != (n_keys,) or not np.issubdtype(arr.dtype, np.integer):
            raise DamagedFileError(path, f"{name} has shape {arr.shape} and dtype {arr.dtype}, expected "
                                         f"[{n_keys}] integers (one per blending token)")
    bad = np.flatnonzero((ids < 0) | (ids >= base_vocab))
    if bad.size:
        raise DamagedFileError(path, f"{bad.size} base ids outside [0, {base_vocab}) (first: blending id "
                                     f"{bad[0]} -> {ids[bad[0]]})")
    if (dist < -1).any():
        raise DamagedFileError(path, "negative distances")


def _mined(keys: list[str], base: TokenizerProfile, threads: int, return_ties: bool):
    """MinED over unique non-exact keys. Returns (ids, dist, ties: {blend id: base ids} )."""
    from fusekernels.align.mined import mined_map

    index = base.token_to_id
    ids = np.fromiter((index.get(k, -1) for k in keys), dtype=np.int32, count=len(keys))
    dist = np.where(ids >= 0, 0, -1).astype(np.int32)
    missing = np.flatnonzero(ids < 0)
    ties: dict[int, np.ndarray] = {}
    if missing.size:
        unique: dict[str, int] = {}
        slot = np.fromiter((unique.setdefault(keys[i], len(unique)) for i in missing.tolist()), dtype=np.int64,
                           count=missing.size)
        # Targets: every defined base token in id order (ids the tokenizer leaves undefined are
        # not vocabulary entries; the published code iterates get_vocab()).
        defined = np.flatnonzero(np.fromiter((t != "" for t in base.tokens), dtype=bool, count=base.vocab_size))
        targets = base.tokens if defined.size == base.vocab_size else [base.tokens[i] for i in defined.tolist()]
        result = mined_map(list(unique), targets, threads=threads, return_ties=return_ties)
        ids[missing] = defined[np.asarray(result.ids, dtype=np.int64)[slot]].astype(np.int32)
        dist[missing] = np.asarray(result.distances, dtype=np.int32)[slot]
        if return_ties:
            off = np.asarray(result.tie_offsets)
            tie_ids = defined[np.asarray(result.tie_ids, dtype=np.int64)]
            for blend_id, s in zip(missing.tolist(), slot.tolist()):
                if off[s + 1] - off[s] > 1:
                    ties[blend_id] = tie_ids[off[s]:off[s + 1]]
    return ids, dist, ties


def cooccurrence_counts(sequences: Iterable, rows: np.ndarray, column_of: np.ndarray, *,
                        window: int = _WINDOW) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Sparse co-occurrence rows: for token ids in ``rows``, counts of tokens within ``window``
    positions (either side) whose ``column_of[id] >= 0``, keyed by that column.

    Returns ``{row id: (columns int64 ascending, counts int64)}``. Never dense: pairs are
    collected as int64 keys and reduced with ``np.unique``.
    """
    wanted = np.zeros(len(column_of), dtype=bool)
    wanted[np.asarray(rows, dtype=np.int64)] = True
    width = int(column_of.max()) + 2 if len(column_of) else 1
    chunks = []
    for seq in sequences:
        ids = np.asarray(seq, dtype=np.int64)
        for d in range(1, window + 1):
            if ids.size <= d:
                break
            for left, right in ((ids[:-d], ids[d:]), (ids[d:], ids[:-d])):
                col = column_of[right]
                keep = wanted[left] & (col >= 0)
                if keep.any():
                    chunks.append(left[keep] * width + col[keep])
    if not chunks:
        return {}
    keys, counts = np.unique(np.concatenate(chunks), return_counts=True)
    row_of, col_of = np.divmod(keys, width)
    bounds = np.flatnonzero(np.diff(row_of)) + 1
    out = {}
    for r, c, n in zip(np.split(row_of, bounds), np.split(col_of, bounds), np.split(counts, bounds)):
        out[int(r[0])] = (c, n.astype(np.int64))
    return out


def _cosine(a: tuple[np.ndarray, np.ndarray] | None, b: tuple[np.ndarray, np.ndarray] | None) -> float:
    if a is None or b is None:
        return 0.0
    _, ia, ib = np.intersect1d(a[0], b[0], assume_unique=True, return_indices=True)
    if ia.size == 0:
        return 0.0
    dot = float(np.dot(a[1][ia].astype(np.float64), b[1][ib].astype(np.float64)))
    return dot / (float(np.linalg.norm(a[1].astype(np.float64))) * float(np.linalg.norm(b[1].astype(np.float64))))


def _refine_with_cooccurrence(ids, ties, keys, base, blend, base_tok, blend_tok, corpus, corpus_ids, window):
    if corpus_ids is not None:
        base_seqs, blend_seqs = corpus_ids
    else:
        if corpus is None:
            raise ValueError("mode='co_occurrence' needs corpus (texts) or corpus_ids")
        if base_tok is None or blend_tok is None:
            raise ValueError("mode='co_occurrence' with a text corpus needs tokenizers, not profiles")
        texts = list(corpus)
        base_seqs = [base_tok.encode(t, add_special_tokens=False) for t in texts]
        blend_seqs = [blend_tok.encode(t, add_special_tokens=False) for t in texts]
    exact = np.flatnonzero(np.fromiter((k in base.token_to_id for k in keys), dtype=bool, count=len(keys)))
    # Columns: the base ids of tokens present in both vocabularies (exact matches).
    blend_col = np.full(blend.vocab_size, -1, dtype=np.int64)
    blend_col[exact] = ids[exact]
    base_col = np.full(base.vocab_size, -1, dtype=np.int64)
    base_col[np.unique(ids[exact])] = np.unique(ids[exact])
    tied = np.fromiter(ties.keys(), dtype=np.int64, count=len(ties))
    candidates = np.unique(np.concatenate(list(ties.values()))).astype(np.int64)
    blend_rows = cooccurrence_counts(blend_seqs, tied, blend_col, window=window)
    base_rows = cooccurrence_counts(base_seqs, candidates, base_col, window=window)
    refined = ids.copy()
    for blend_id, cands in ties.items():
        row = blend_rows.get(blend_id)
        if row is None:
            continue
        scores = [_cosine(row, base_rows.get(int(c))) for c in cands.tolist()]
        best = int(np.argmax(scores))  # first maximum -> lowest base id among equals
        if scores[best] > 0.0:
            refined[blend_id] = int(cands[best])
    return refined


def build_vocab_map(base, blend, *, mode: str = "default", corpus: Iterable[str] | None = None,
                    corpus_ids: tuple[Sequence, Sequence] | None = None, window: int = _WINDOW,
                    threads: int = 0) -> VocabMap:
    """The MinED vocabulary map from ``blend`` to ``base`` (tokenizers or profiles).

    Args:
        mode: ``"default"`` (MinED, ties to the lowest base id) or ``"co_occurrence"``.
        corpus: texts for the co-occurrence counts (needs tokenizers, encoded without specials),
            or ``corpus_ids = (base id sequences, blending id sequences)`` of the same texts.
        window: co-occurrence window (tokens either side), 5 as published.
        threads: MinED threads (0 = all cores).
    The default-mode map of a profile pair is cached (same object returned) and stored on disk in
    the user cache folder, keyed by content fingerprints of both vocabularies, for later processes.
    """
    if mode not in VOCAB_MAP_MODES:
        raise ValueError(f"mode must be one of {VOCAB_MAP_MODES}, got {mode!r}")
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive int, got {window!r}")
    if mode == "co_occurrence" and corpus is None and corpus_ids is None:
        raise ValueError("mode='co_occurrence' needs corpus (texts) or corpus_ids")
    base_tok = None if isinstance(base, TokenizerProfile) else base
    blend_tok = None if isinstance(blend, TokenizerProfile) else blend
    base, blend = as_profile(base, "base"), as_profile(blend, "blend")
    key = (id(base), id(blend))
    if mode == "default":
        with _CACHE_LOCK:
            hit = _CACHE.get(key)
            if hit is not None and hit[0] is base and hit[1] is blend:
                return hit[2]
    keys = marker_replaced(blend, base)
    if mode == "default":
        from fusekernels.storage import cached_arrays

        from ..fingerprint import profile_fingerprint

        # on disk, keyed by both vocabularies' content: later processes skip the MinED search
        arrays = cached_arrays("vocab-map", f"{profile_fingerprint(base)}-{profile_fingerprint(blend)}",
                               lambda: dict(zip(("ids", "distances"), _mined(keys, base, threads, False)[:2])),
                               keys=("ids", "distances"))
        ids, dist, ties = arrays["ids"].astype(np.int32), arrays["distances"].astype(np.int32), {}
    else:
        ids, dist, ties = _mined(keys, base, threads, return_ties=True)
    if mode == "co_occurrence" and ties:
        ids = _refine_with_cooccurrence(ids, ties, keys, base, blend, base_tok, blend_tok, corpus, corpus_ids, window)
    result = VocabMap(keys=keys, base_ids=ids, distances=dist, base_tokens=base.tokens, method=mode)
    if mode == "default":
        with _CACHE_LOCK:
            _CACHE[key] = (base, blend, result)
    return result
