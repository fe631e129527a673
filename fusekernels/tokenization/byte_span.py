"""Byte-span alignment: the default, exact way to carry a teacher's top-k onto base positions.

Both tokenizations of one text cover the same UTF-8 bytes. Base token j covers bytes
``[Bs_j, Be_j)`` of the text, blending token i covers ``[As_i, Ae_i)`` (cumulative token byte
lengths, minus a SentencePiece dummy-prefix space, see :meth:`TokenizerProfile.text_start`).
Base position j takes the teacher's top-k of blending position i when **exactly one** blending
token has the same span and exactly one base token has it (special tokens span zero bytes, so
e.g. two EOS tokens at the end of a text match each other). Such a pair predicts the same next
byte offset, so the teacher's next-token distribution is meaningful there. Characters split
across tokens, ``<0xNN>`` byte-fallback pieces and leading-space differences need no special
case: only byte offsets are compared.

``match="end"`` relaxes the rule to "exactly one blending token ends at the same byte offset":
the teacher's next-token distribution there is still about the text after that offset (it is
conditioned on a differently split prefix), and many more positions qualify.

Top-k ids are carried through a :class:`ByteSpanMap` (blending id -> base id):

1. the base token with exactly the same bytes (regular tokens preferred over ``<0xNN>``);
2. special tokens by role (bos/eos/pad/unk), never by bytes;
3. otherwise, by ``fallback``:
   ``"mined"`` (default): the base token whose bytes, decoded as UTF-8 (bytes of an incomplete
   character become one private-use code point each), are at the smallest Levenshtein distance
   from the blending token's (MinED, ties -> lowest base id);
   ``"prefix"``: the longest base token whose bytes are a prefix of the blending token's bytes,
   i.e. the first base token of that continuation of the text (much cheaper than MinED for
   large vocabularies, and never a token that contradicts the predicted text);
   ``"none"``: unmapped (dropped from the top-k).

Both sequences must cover the same text; ``check`` (see :func:`check_same_text`) verifies it from
the token bytes (default ``"length"``: equal byte lengths, free from the cumulative offsets) and
raises ``ValueError`` instead of aligning two different texts.

Positions without a 1:1 span (and matched positions whose top-k maps to nothing) get the published
one-hot fallback: (base id, logit 1.0). Everything is vectorised numpy: O(n + m) offsets,
``searchsorted`` matching, table lookups and a per-row de-duplication of the k ids.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from ..fingerprint import profile_fingerprint, token_bytes_fingerprint
from .profile import TokenizerProfile

__all__ = ["ByteSpanMap", "build_byte_span_map", "byte_span_positions", "byte_span_align",
           "byte_span_align_batch", "check_same_text", "decoded_token_strings", "CHECKS"]

_SURROGATE_TO_PUA = {0xDC80 + b: 0xF780 + b for b in range(128)}


def decoded_token_strings(profile: TokenizerProfile, ids=None) -> list[str]:
    """Token bytes decoded as UTF-8; each byte of an incomplete character becomes U+F780+b-0x80."""
    tb = profile.token_bytes
    chosen = range(len(tb)) if ids is None else ids
    return [tb[i].decode("utf-8", "surrogateescape").translate(_SURROGATE_TO_PUA) for i in chosen]


@dataclass(eq=False)
class ByteSpanMap:
    """Blending id -> base id table used by byte-span mode.

    Attributes:
        ids: int32 [V_blend], base id or -1 (unmapped: dropped from a transferred top-k).
        exact: bool [V_blend], True where the base token has exactly the same bytes (or role).
        fallback: ``"mined"``, ``"prefix"`` or ``"none"``, how the non-exact entries were filled.
    """

    ids: np.ndarray
    exact: np.ndarray
    fallback: str
    base_fingerprint: str | None = None
    blend_fingerprint: str | None = None

    @property
    def exact_rate(self) -> float:
        return float(self.exact.mean()) if self.exact.size else 0.0

    def save_npz(self, path) -> None:
        """Store the table (int32 ids, exact flags) with fingerprints of both vocabularies."""
        if self.base_fingerprint is None or self.blend_fingerprint is None:
            raise ValueError("this ByteSpanMap has no vocabulary fingerprints; build it with build_byte_span_map")
        np.savez_compressed(path, ids=self.ids.astype(np.int32), exact=self.exact, fallback=np.array(self.fallback),
                            base_fingerprint=np.array(self.base_fingerprint),
                            blend_fingerprint=np.array(self.blend_fingerprint))

    @classmethod
    def load_npz(cls, path, base: TokenizerProfile, blend: TokenizerProfile) -> "ByteSpanMap":
        """Load :meth:`save_npz` output; ValueError if built for other tokenizers."""
        want_base, want_blend = token_bytes_fingerprint(base), token_bytes_fingerprint(blend)
        with np.load(path, allow_pickle=False) as data:
            if str(data["base_fingerprint"]) != want_base or str(data["blend_fingerprint"]) != want_blend:
                raise ValueError(f"{path}: byte-span map was built for other tokenizers")
            return cls(ids=data["ids"].astype(np.int32), exact=data["exact"].astype(bool),
                       fallback=str(data["fallback"]), base_fingerprint=want_base, blend_fingerprint=want_blend)


_FALLBACKS = ("mined", "prefix", "none")
_MAP_CACHE: dict = {}
_MAP_LOCK = threading.Lock()


def build_byte_span_map(base: TokenizerProfile, blend: TokenizerProfile, *, fallback: str = "mined",
                        threads: int = 0, cache: bool = True) -> ByteSpanMap:
    """The blending -> base id table of byte-span mode.

    With ``cache`` (default) the table is kept per profile pair and fallback in this process and
    on disk in the user cache folder (``fusekernels.storage.cached_arrays``, keyed by content
    fingerprints of both vocabularies), so only the first process ever runs the MinED search."""
    if fallback not in _FALLBACKS:
        raise ValueError(f"fallback must be one of {_FALLBACKS}, got {fallback!r}")
    key = (id(base), id(blend), fallback)
    if cache:
        with _MAP_LOCK:
            hit = _MAP_CACHE.get(key)
            if hit is not None and hit[0] is base and hit[1] is blend:
                return hit[2]

    def build() -> dict:
        ids = np.full(blend.vocab_size, -1, dtype=np.int32)
        exact = np.zeros(blend.vocab_size, dtype=bool)
        by_bytes = base.bytes_to_id
        tb = blend.token_bytes
        for i in np.flatnonzero(~blend.is_special).tolist():
            hit = by_bytes.get(tb[i])
            if hit is not None:
                ids[i] = hit
                exact[i] = True
        for role, blend_id in blend.special_ids.items():
            base_id = base.special_ids.get(role)
            if base_id is not None and ids[blend_id] < 0:
                ids[blend_id] = base_id
                exact[blend_id] = True
        if fallback == "mined":
            missing = np.flatnonzero((ids < 0) & ~blend.is_special & (blend.byte_lengths > 0))
            targets = np.flatnonzero(~base.is_special & (base.byte_lengths > 0))
            if missing.size and targets.size:
                from fusekernels.align.mined import mined_map

                result = mined_map(decoded_token_strings(blend, missing.tolist()),
                                   decoded_token_strings(base, targets.tolist()), threads=threads)
                ids[missing] = targets[np.asarray(result.ids, dtype=np.int64)].astype(np.int32)
        elif fallback == "prefix":
            for i in np.flatnonzero((ids < 0) & ~blend.is_special & (blend.byte_lengths > 1)).tolist():
                data = tb[i]
                for cut in range(len(data) - 1, 0, -1):
                    hit = by_bytes.get(data[:cut])
                    if hit is not None:
                        ids[i] = hit
                        break
        return {"ids": ids, "exact": exact, "base_fingerprint": np.array(token_bytes_fingerprint(base)),
                "blend_fingerprint": np.array(token_bytes_fingerprint(blend))}

    if cache:
        from fusekernels.storage import cached_arrays


        # on disk, keyed by both vocabularies' content: later processes skip the MinED search
        arrays = cached_arrays(f"byte-span-{fallback}", f"{profile_fingerprint(base)}-{profile_fingerprint(blend)}",
                               build, keys=("ids", "exact", "base_fingerprint", "blend_fingerprint"))
    else:
        arrays = build()
    ids, exact = arrays["ids"].astype(np.int32, copy=False), arrays["exact"].astype(bool, copy=False)
    table = ByteSpanMap(ids=ids, exact=exact, fallback=fallback, base_fingerprint=str(arrays["base_fingerprint"]),
                        blend_fingerprint=str(arrays["blend_fingerprint"]))
    if cache:
        with _MAP_LOCK:
            _MAP_CACHE[key] = (base, blend, table)
    return table


CHECKS = ("length", "bytes", "prefix", "none")
# Byte-span rule (see byte_span_positions): a base token takes the distribution of the blending
# token with the same byte span, or of the blending token ending where it ends.
MATCH_RULES = ("span", "end")
_CHECK_HINT = ("special tokens count as 0 bytes; check='prefix' accepts a sequence truncated at a maximum "
               "length, check='none' skips this check")


@dataclass(frozen=True)
class _Extent:
    """How many text bytes one token sequence covers, from its token bytes alone."""

    total: int  # sum of the token byte lengths, dummy-prefix space included
    start: int  # leading bytes that are no text (0 or 1, TokenizerProfile.text_start)
    ambiguous: bool  # "unless_space" dummy prefix and no text: the start may as well be 0
    unknown: int  # unk-role tokens: each stands for >= 1 byte the profile cannot name

    def bounds(self) -> tuple[int, float]:
        """(lowest, highest) possible text length in bytes."""
        lo, hi = (self.total - 1, self.total) if self.ambiguous else (self.total - self.start,) * 2
        return (lo + self.unknown, np.inf) if self.unknown else (lo, hi)

    def describe(self) -> str:
        lo, hi = self.bounds()
        if hi == np.inf:
            return f"at least {lo} bytes ({self.unknown} unknown token(s))"
        return f"{lo} bytes" if lo == hi else f"{lo} or {hi} bytes (dummy-prefix space unknown without text)"


def _extent(profile: TokenizerProfile, ids: np.ndarray, total: int, text: str | None) -> _Extent:
    start = profile.text_start(ids, text)
    unk = profile.special_ids.get("unk")
    return _Extent(total=total, start=start,
                   ambiguous=start == 1 and text is None and profile.dummy_prefix == "unless_space",
                   unknown=int(np.count_nonzero(ids == unk)) if unk is not None else 0)


def _resolve_start(own: _Extent, other: _Extent) -> int:
    """An ambiguous dummy prefix is text when that makes the lengths agree exactly."""
    if own.ambiguous and not other.ambiguous and not other.unknown and other.bounds()[0] == own.total:
        return 0
    return own.start


def _known_text(profile: TokenizerProfile, ids: np.ndarray, start: int) -> tuple[bytes, bool]:
    """Text bytes of ``ids`` up to the first unk-role token, and whether that is all of them."""
    unk = profile.special_ids.get("unk")
    cut = ids.size
    if unk is not None:
        hits = np.flatnonzero(ids == unk)
        cut = int(hits[0]) if hits.size else cut
    tb = profile.token_bytes
    return b"".join([tb[i] for i in ids[:cut].tolist()])[start:], cut == ids.size


def _first_difference(x: bytes, y: bytes) -> int:
    n = min(len(x), len(y))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.frombuffer(x, np.uint8, n) != np.frombuffer(y, np.uint8, n))
    return int(diff[0]) if diff.size else n


def _check_same_text(base: TokenizerProfile, b: np.ndarray, blend: TokenizerProfile, a: np.ndarray, *,
                     text: str | None, check: str, totals: tuple[int, int] | None = None) -> tuple[int, int]:
    """:func:`check_same_text` on validated int64 ids; ``totals``: their byte-length sums if known."""
    if check not in CHECKS:
        raise ValueError(f"check must be one of {CHECKS}, got {check!r}")
    if totals is None:
        totals = (int(base.byte_lengths[b].sum()), int(blend.byte_lengths[a].sum()))
    eb, ea = _extent(base, b, totals[0], text), _extent(blend, a, totals[1], text)
    starts = (_resolve_start(eb, ea), _resolve_start(ea, eb))
    # WordPiece drops spaces (and case, accents): its token bytes cannot vouch for the text.
    if check == "none" or base.kind == "wordpiece" or blend.kind == "wordpiece":
        return starts
    (b_lo, b_hi), (a_lo, a_hi) = eb.bounds(), ea.bounds()
    if check != "prefix" and max(b_lo, a_lo) > min(b_hi, a_hi):
        raise ValueError(f"base_ids and blend_ids must tokenize the same text, but base_ids covers "
                         f"{eb.describe()} and blend_ids {ea.describe()} ({_CHECK_HINT})")
    if check == "length":
        return starts
    # Bytes: try the resolved starts first, then the other choice for an ambiguous dummy prefix.
    b_starts = (starts[0], 1 - starts[0]) if eb.ambiguous else (starts[0],)
    a_starts = (starts[1], 1 - starts[1]) if ea.ambiguous else (starts[1],)
    first = None
    for sb in b_starts:
        x, x_whole = _known_text(base, b, sb)
        for sa in a_starts:
            y, y_whole = _known_text(blend, a, sa)
            at = _first_difference(x, y)
            same = at == min(len(x), len(y)) and (len(x) == len(y) or check == "prefix" or not (x_whole and y_whole))
            if same:
                return sb, sa
            if first is None:
                first = (at, x, y)
    at, x, y = first
    raise ValueError(f"base_ids and blend_ids must tokenize the same text, but their text bytes differ at byte {at} "
                     f"of {len(x)} (base_ids) / {len(y)} (blend_ids): base_ids has {x[at:at + 16]!r}, blend_ids "
                     f"{y[at:at + 16]!r} ({_CHECK_HINT})")


def check_same_text(base_ids, blend_ids, base: TokenizerProfile, blend: TokenizerProfile, *,
                    text: str | None = None, check: str = "length") -> tuple[int, int]:
    """Verify that ``base_ids`` and ``blend_ids`` are tokenizations of one text (from token bytes).

    Args:
        base_ids: int [m]; blend_ids: int [n].
        text: the text, only used to resolve a SentencePiece ``"unless_space"`` dummy prefix;
            without it such a leading space may be either (both choices are accepted).
        check: ``"length"`` (default): equal text byte lengths (one sum per sequence);
            ``"bytes"``: identical text bytes (joins the token bytes, O(bytes) Python work);
            ``"prefix"``: one text is a prefix of the other (a sequence truncated at a maximum
            length), compared byte for byte; ``"none"``: no check.
    Special tokens (BOS, EOS, pad, control tokens) stand for no text and count as 0 bytes, exactly
    as in the byte offsets of :func:`byte_span_positions`, so a sequence with EOS appended still
    matches one without. An ``unk`` token stands for at least one byte the profile cannot name:
    that side's length becomes a lower bound and bytes after it are not compared. WordPiece
    profiles have approximate bytes (spaces and case are lost) and are not checked.
    Raises:
        ValueError naming ``base_ids`` and ``blend_ids`` with both byte lengths (or the first
        differing byte) when they cover different texts.
    Returns:
        ``(base_start, blend_start)``: leading bytes of each sequence that are a dummy-prefix
        space rather than text (0 or 1).
    """
    b = base.check_ids(base_ids, "base_ids")
    a = blend.check_ids(blend_ids, "blend_ids")
    return _check_same_text(base, b, blend, a, text=text, check=check)


def span_keys(lengths: np.ndarray, ends: np.ndarray, start: int) -> np.ndarray:
    """int64 [n] keys ``start_offset * 2**32 + end_offset`` (non-decreasing along the sequence)
    from the token byte lengths [n] and their cumulative sums [n]."""
    starts = ends - lengths
    # The dummy-prefix space belongs to no text byte: shift it out (clamped at 0).
    starts = np.maximum(starts - start, 0)
    ends = np.maximum(ends - start, 0)
    return (starts << 32) | ends


def _unique_matches(bkey: np.ndarray, akey: np.ndarray) -> np.ndarray:
    """For each base key, the index of the only equal blending key (and the base key is unique
    among base keys too), else -1. Keys need not be sorted."""
    a_order = np.argsort(akey, kind="stable")
    a_sorted = akey[a_order]
    lo = np.searchsorted(a_sorted, bkey, side="left")
    hi = np.searchsorted(a_sorted, bkey, side="right")
    b_sorted = np.sort(bkey, kind="stable")
    b_count = np.searchsorted(b_sorted, bkey, side="right") - np.searchsorted(b_sorted, bkey, side="left")
    one_to_one = (hi - lo == 1) & (b_count == 1)
    return np.where(one_to_one, a_order[np.minimum(lo, len(a_order) - 1)], -1)


def byte_span_positions(base_ids, blend_ids, base: TokenizerProfile, blend: TokenizerProfile, *,
                        text: str | None = None, match: str = "span", check: str = "length") -> np.ndarray:
    """For every base position, the blending position it takes the teacher's top-k from, or -1.

    Args:
        base_ids: int [m] base token ids of the text (as fed to the base model).
        blend_ids: int [n] blending token ids of the same text.
        text: the text itself, only needed to resolve a SentencePiece dummy prefix exactly when
            the text may start with a space (see :meth:`TokenizerProfile.text_start`); without
            it, an ambiguous leading space is taken as text when that makes both sequences
            cover equally many bytes.
        match: ``"span"`` (default): exactly one blending token has the same byte span.
            ``"end"``: exactly one blending token (of the same emptiness) *ends* at the same byte
            offset; both models then predict the continuation from the same point of the text,
            so the teacher's distribution applies even when the spans differ (more positions).
        check: how to verify that both sequences cover the same text, see :func:`check_same_text`
            (default ``"length"``, free: the last cumulative byte offsets are compared).
    Returns:
        int64 [m]; ``-1`` where no single blending token matches.
    Raises:
        ValueError when the sequences cover different texts (naming both byte lengths).
    """
    if match not in MATCH_RULES:
        raise ValueError(f"match must be one of {MATCH_RULES}, got {match!r}")
    b = base.check_ids(base_ids, "base_ids")
    a = blend.check_ids(blend_ids, "blend_ids")
    b_len, a_len = base.byte_lengths[b], blend.byte_lengths[a]
    b_end, a_end = np.cumsum(b_len, dtype=np.int64), np.cumsum(a_len, dtype=np.int64)
    b_start, a_start = _check_same_text(base, b, blend, a, text=text, check=check,
                                        totals=(int(b_end[-1]), int(a_end[-1])))
    bkey = span_keys(b_len, b_end, b_start)
    akey = span_keys(a_len, a_end, a_start)
    if match == "end":
        # (end offset, non-empty) so an empty special (EOS) pairs with an empty special only.
        mask = np.int64(0xFFFFFFFF)
        bkey = ((bkey & mask) << 1) | ((bkey >> 32) != (bkey & mask))
        akey = ((akey & mask) << 1) | ((akey >> 32) != (akey & mask))
    return _unique_matches(bkey, akey)


def check_topk(topk_ids, topk_logits, n: int, blend_vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate a teacher's top-k at ``n`` blending positions: ``topk_ids`` int [n, k] inside
    ``[0, blend_vocab)``, ``topk_logits`` float [n, k] without NaN or +inf (-inf marks padding).
    Returns both as arrays; ``ValueError`` naming the argument otherwise."""
    tid = np.asarray(topk_ids)
    tlg = np.asarray(topk_logits)
    if tid.ndim != 2 or tid.shape[0] != n:
        raise ValueError(f"topk_ids must have shape [{n}, k] (one row per blending token), got {tid.shape}")
    if tlg.shape != tid.shape:
        raise ValueError(f"topk_logits must have the shape of topk_ids {tid.shape}, got {tlg.shape}")
    if not np.issubdtype(tid.dtype, np.integer):
        raise ValueError(f"topk_ids must be integer, got dtype {tid.dtype}")
    if not np.issubdtype(tlg.dtype, np.floating):
        raise ValueError(f"topk_logits must be floating point, got dtype {tlg.dtype}")
    if tid.size and (tid.min() < 0 or tid.max() >= blend_vocab):
        raise ValueError(f"topk_ids holds ids outside [0, {blend_vocab}) of the blending vocabulary")
    if np.isnan(tlg).any():
        raise ValueError("topk_logits contains NaN")
    if np.isposinf(tlg).any():
        raise ValueError("topk_logits contains +inf (logits must be finite; -inf marks padding)")
    return tid, tlg


def transfer_rows(mapped: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k rows carried into the base vocabulary: ``mapped`` int [r, k] base ids (-1 = unmapped),
    ``logits`` float [r, k]. Drops unmapped and repeated ids per row, keeps the order, left-aligns;
    returns ``(ids int32 [r, k] padded -1, logits float32 [r, k] padded -inf, counts int32 [r])``."""
    rows, k = mapped.shape
    order = np.argsort(mapped, axis=1, kind="stable")
    sorted_ids = np.take_along_axis(mapped, order, axis=1)
    repeat_sorted = np.zeros((rows, k), dtype=bool)
    repeat_sorted[:, 1:] = sorted_ids[:, 1:] == sorted_ids[:, :-1]
    repeat = np.empty_like(repeat_sorted)
    np.put_along_axis(repeat, order, repeat_sorted, axis=1)
    keep = (mapped >= 0) & ~repeat
    compact = np.argsort(~keep, axis=1, kind="stable")
    keep = np.take_along_axis(keep, compact, axis=1)
    out_ids = np.where(keep, np.take_along_axis(mapped, compact, axis=1), -1).astype(np.int32)
    out_logits = np.where(keep, np.take_along_axis(logits, compact, axis=1), -np.inf).astype(np.float32)
    return out_ids, out_logits, keep.sum(axis=1).astype(np.int32)


def byte_span_align(base_ids, blend_ids, topk_ids, topk_logits, base: TokenizerProfile,
                    blend: TokenizerProfile, *, id_map: ByteSpanMap | None = None, text: str | None = None,
                    match: str = "span", check: str = "length", return_mask: bool = False):
    """Carry the blending top-k onto the base positions by exact byte spans.

    Args:
        base_ids: int [m]; blend_ids: int [n] (token ids of the same text).
        topk_ids: int [n, k] blending ids of the teacher's top-k at every blending position.
        topk_logits: float [n, k] their logits (any float dtype, no NaN).
        id_map: the :class:`ByteSpanMap` (default: ``build_byte_span_map(base, blend)``, cached).
        text: the text itself, optional (see :func:`byte_span_positions`).
        match: ``"span"`` or ``"end"`` (see :func:`byte_span_positions`).
        check: ``"length"`` (default), ``"bytes"``, ``"prefix"`` or ``"none"``: how to verify
            that both sequences cover the same text (:func:`check_same_text`).
        return_mask: also return bool [m], True where the position got the teacher's distribution.
    Returns:
        ``TopKResult`` (``ids`` int32 [m, k] padded -1, ``logits`` float32 [m, k] padded -inf,
        ``counts`` int32 [m]), and the mask when ``return_mask``.
    Raises:
        ValueError naming the argument for bad input, and naming ``base_ids`` / ``blend_ids`` with
        both byte lengths when the two sequences cover different texts.
    """
    from fusekernels.align.topk_transfer import TopKResult

    b = base.check_ids(base_ids, "base_ids")
    a = blend.check_ids(blend_ids, "blend_ids")
    tid, tlg = check_topk(topk_ids, topk_logits, a.size, blend.vocab_size)
    table = build_byte_span_map(base, blend) if id_map is None else id_map
    if table.ids.shape[0] != blend.vocab_size:
        raise ValueError(f"id_map covers {table.ids.shape[0]} blending ids, the blending vocabulary has "
                         f"{blend.vocab_size}")
    pos = byte_span_positions(b, a, base, blend, text=text, match=match, check=check)
    m, k = b.size, max(tid.shape[1], 1)
    ids = np.full((m, k), -1, dtype=np.int32)
    logits = np.full((m, k), -np.inf, dtype=np.float32)
    counts = np.zeros(m, dtype=np.int32)
    rows = np.flatnonzero(pos >= 0)
    if rows.size and tid.shape[1]:
        src = pos[rows]
        r_ids, r_logits, r_counts = transfer_rows(table.ids[tid[src]], tlg[src])
        ids[rows], logits[rows], counts[rows] = r_ids, r_logits, r_counts
    teacher = counts > 0
    fallback = ~teacher
    ids[fallback, 0] = b[fallback]
    logits[fallback, 0] = 1.0
    counts[fallback] = 1
    result = TopKResult(ids=ids, logits=logits, counts=counts)
    return (result, teacher) if return_mask else result


def byte_span_align_batch(items, base: TokenizerProfile, blend: TokenizerProfile, *,
                          id_map: ByteSpanMap | None = None, match: str = "span", check: str = "length",
                          return_mask: bool = False) -> list:
    """:func:`byte_span_align` over ``items`` = iterable of ``(base_ids, blend_ids, topk_ids, topk_logits)``
    (optionally a 5th element: the text). Error messages start with the item (``items[p]``)."""
    if check not in CHECKS:
        raise ValueError(f"check must be one of {CHECKS}, got {check!r}")
    table = build_byte_span_map(base, blend) if id_map is None else id_map
    out = []
    for p, item in enumerate(items):
        text = item[4] if len(item) > 4 else None
        try:
            out.append(byte_span_align(item[0], item[1], item[2], item[3], base, blend, id_map=table,
                                       text=text, match=match, check=check, return_mask=return_mask))
        except ValueError as exc:
            raise ValueError(f"items[{p}]: {exc}") from None
    return out
