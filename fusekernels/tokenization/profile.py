"""What a tokenizer's tokens *are*: kind, space marker, token strings and exact token bytes.

A :class:`TokenizerProfile` is built once per tokenizer (cached) from any Hugging Face
``PreTrainedTokenizerBase`` and holds plain Python/numpy data only, so it pickles cheaply into
``datasets.map(num_proc=...)`` workers.

Kinds (detected from the vocabulary and from how a probe text encodes, never from the Python
class, which transformers 5 shares between SentencePiece and byte-level BPE):

- ``"sentencepiece"``: pieces use ``▁`` (U+2581) for a space, byte fallback ``<0xNN>``;
- ``"byte_level"``: GPT-2 style, every byte is a printable stand-in character (``Ġ`` = space);
- ``"wordpiece"``: BERT style ``##`` continuations (spaces and case are lost: bytes are approximate);
- ``"other"``: token strings are taken as literal text.

Token bytes: byte-level strings are mapped back through the byte alphabet, ``<0xNN>`` is that
byte, ``▁`` is a space, special tokens are empty (they stand for no text), non-special added
tokens are their content. So for a text encoded without special tokens, concatenating the token
bytes reproduces ``text.encode("utf-8")`` exactly, up to the SentencePiece *dummy prefix*: an SPM
tokenizer with ``add_dummy_prefix`` puts a space before the first piece. The profile records this
behaviour in :attr:`TokenizerProfile.dummy_prefix` and :meth:`TokenizerProfile.text_start` says how
many leading bytes of a sequence are that inserted space.
"""
from __future__ import annotations

import re
import threading
import weakref
from dataclasses import dataclass, field

import numpy as np

__all__ = ["TokenizerProfile", "byte_alphabet", "SPM_MARKER", "BYTE_LEVEL_MARKER"]

SPM_MARKER = "\u2581"
BYTE_LEVEL_MARKER = "\u0120"
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_PROBE = "Hello world\n  a-b 你好 ok"


def byte_alphabet() -> dict[int, str]:
    """The GPT-2 byte -> printable character table (bytes 0..255 -> 256 distinct characters)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_CHAR_TO_BYTE = {ch: b for b, ch in byte_alphabet().items()}
# str.translate table mapping each alphabet character to the Latin-1 character of its byte.
_TO_LATIN1 = {ord(ch): b for ch, b in _CHAR_TO_BYTE.items()}
# Code points below 256 that are not alphabet characters must not pass as Latin-1 bytes.
_TO_LATIN1.update({cp: 0xFFFF for cp in range(256) if chr(cp) not in _CHAR_TO_BYTE})


@dataclass(eq=False)
class TokenizerProfile:
    """Vocabulary facts of one tokenizer, indexed by token id (``V = vocab_size``).

    Attributes:
        name: free-form label (the tokenizer's ``name_or_path``).
        kind: ``"sentencepiece" | "byte_level" | "wordpiece" | "other"``.
        marker: the space marker used by the compatible (published) mode (``▁``, ``Ġ`` or ``""``).
        tokens: ``list[str]`` of length V, the ``convert_ids_to_tokens`` string of every id
            (``""`` for ids the tokenizer does not define).
        token_bytes: ``list[bytes]`` of length V, the exact UTF-8 bytes each token stands for.
        byte_lengths: int32 [V], ``len(token_bytes[i])``.
        is_special: bool [V], special tokens (and undefined ids); their bytes are empty.
        is_byte_fallback: bool [V], SentencePiece ``<0xNN>`` tokens.
        dummy_prefix: ``"none"``, ``"always"`` (a space is put before the first piece of every
            text) or ``"unless_space"`` (only when the text does not already start with one).
        special_ids: role -> id for ``bos``, ``eos``, ``pad``, ``unk`` where defined.
    """

    name: str
    kind: str
    marker: str
    tokens: list
    token_bytes: list
    byte_lengths: np.ndarray
    is_special: np.ndarray
    is_byte_fallback: np.ndarray
    dummy_prefix: str = "none"
    special_ids: dict = field(default_factory=dict)
    _token_to_id: dict | None = field(default=None, repr=False)
    _bytes_to_id: dict | None = field(default=None, repr=False)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @property
    def token_to_id(self) -> dict:
        """``{token string: lowest id}`` (built on first use)."""
        if self._token_to_id is None:
            mapping = {}
            for i, tok in enumerate(self.tokens):
                mapping.setdefault(tok, i)
            self._token_to_id = mapping
        return self._token_to_id

    @property
    def bytes_to_id(self) -> dict:
        """``{token bytes: id}`` over non-special tokens, preferring regular tokens over byte
        fallback ``<0xNN>`` ones, then the lowest id (the token the tokenizer itself emits)."""
        if self._bytes_to_id is None:
            mapping = {}
            order = np.concatenate([np.flatnonzero(~self.is_special & ~self.is_byte_fallback),
                                    np.flatnonzero(~self.is_special & self.is_byte_fallback)])
            tb = self.token_bytes
            for i in order.tolist():
                b = tb[i]
                if b and b not in mapping:
                    mapping[b] = i
            self._bytes_to_id = mapping
        return self._bytes_to_id

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_token_to_id"] = None
        state["_bytes_to_id"] = None
        return state

    # ------------------------------------------------------------------ sequences
    def check_ids(self, ids, arg: str = "ids") -> np.ndarray:
        """``ids`` as a 1-D int64 array; ValueError naming ``arg`` if empty or out of range."""
        arr = np.asarray(ids)
        if arr.ndim != 1:
            raise ValueError(f"{arg} must be 1-D, got shape {arr.shape}")
        if arr.size == 0:
            raise ValueError(f"{arg} must not be empty")
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{arg} must hold integer token ids, got dtype {arr.dtype}")
        arr = arr.astype(np.int64, copy=False)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= self.vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{arg} holds id {bad} outside [0, {self.vocab_size}) of tokenizer {self.name!r}")
        return arr

    def sequence_bytes(self, ids) -> bytes:
        """Concatenated token bytes of ``ids`` (including any dummy-prefix space)."""
        arr = self.check_ids(ids)
        tb = self.token_bytes
        return b"".join([tb[i] for i in arr.tolist()])

    def text_start(self, ids, text: str | None = None) -> int:
        """Number of leading bytes of ``sequence_bytes(ids)`` that are not text (0 or 1).

        Only SentencePiece dummy prefixes insert bytes. With ``dummy_prefix == "unless_space"``
        the token bytes alone cannot tell an inserted space from a text that starts with one:
        pass ``text`` to decide exactly; without it the space is taken as inserted.
        """
        if self.dummy_prefix == "none":
            return 0
        arr = self.check_ids(ids)
        first = next((self.token_bytes[i] for i in arr.tolist() if self.token_bytes[i]), b"")
        if not first.startswith(b" "):
            return 0
        if self.dummy_prefix == "unless_space" and text is not None and text[:1] == " ":
            return 0
        return 1

    def tokens_of(self, ids) -> list[str]:
        """Token strings of ``ids`` (as ``convert_ids_to_tokens``)."""
        toks = self.tokens
        return [toks[i] for i in self.check_ids(ids).tolist()]

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_tokenizer(cls, tokenizer, *, cache: bool = True) -> "TokenizerProfile":
        """Profile of a Hugging Face tokenizer (fast or slow); cached per tokenizer object."""
        if cache:
            with _CACHE_LOCK:
                hit = _CACHE.get(id(tokenizer))
                if hit is not None and hit[0]() is tokenizer:
                    return hit[1]
        profile = _build_profile(tokenizer)
        if cache:
            try:
                ref = weakref.ref(tokenizer)
            except TypeError:
                return profile
            with _CACHE_LOCK:
                _CACHE[id(tokenizer)] = (ref, profile)
                weakref.finalize(tokenizer, _CACHE.pop, id(tokenizer), None)
        return profile


def as_profile(obj, arg: str = "tokenizer") -> TokenizerProfile:
    """``obj`` as a :class:`TokenizerProfile`: a profile itself, or the (cached) profile of a Hugging
    Face tokenizer; ``TypeError`` naming ``arg`` otherwise."""
    if isinstance(obj, TokenizerProfile):
        return obj
    if hasattr(obj, "get_vocab") and hasattr(obj, "encode"):
        return TokenizerProfile.from_tokenizer(obj)
    raise TypeError(f"{arg} must be a TokenizerProfile or a Hugging Face tokenizer, got {type(obj).__name__}")


_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()


def _vocab_strings(tokenizer) -> list:
    vocab = tokenizer.get_vocab()
    if not vocab:
        raise ValueError("tokenizer has an empty vocabulary")
    size = max(vocab.values()) + 1
    tokens = [""] * size
    for tok, idx in vocab.items():
        tokens[idx] = tok
    return tokens


def _special_ids(tokenizer, size: int) -> tuple[np.ndarray, dict, set]:
    special = np.zeros(size, dtype=bool)
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    added_plain = set()
    for idx, added in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items():
        if getattr(added, "special", False):
            ids.add(int(idx))
        else:
            added_plain.add(int(idx))
    for idx in ids:
        if 0 <= idx < size:
            special[idx] = True
    roles = {}
    for role in ("bos", "eos", "pad", "unk"):
        idx = getattr(tokenizer, f"{role}_token_id", None)
        if isinstance(idx, int) and 0 <= idx < size:
            roles[role] = idx
    return special, roles, added_plain - ids


def _detect_kind(tokens: list, probe_tokens: list) -> tuple[str, str]:
    joined = "".join(probe_tokens)
    if probe_tokens and all(ch in _CHAR_TO_BYTE for ch in joined) and BYTE_LEVEL_MARKER in joined:
        return "byte_level", BYTE_LEVEL_MARKER
    if SPM_MARKER in joined:
        return "sentencepiece", SPM_MARKER
    if any(t.startswith("##") for t in probe_tokens) or sum(t.startswith("##") for t in tokens[:50000]) > 100:
        return "wordpiece", ""
    if sum(SPM_MARKER in t for t in tokens[:50000]) > 100:
        return "sentencepiece", SPM_MARKER
    return "other", ""


def _token_bytes(kind: str, tokens: list, special: np.ndarray, added_plain: set) -> tuple[list, np.ndarray]:
    fallback = np.zeros(len(tokens), dtype=bool)
    if kind == "byte_level":
        out = []
        for tok in tokens:
            mapped = tok.translate(_TO_LATIN1)
            try:
                out.append(mapped.encode("latin-1"))
            except UnicodeEncodeError:  # not in the byte alphabet: literal (added) text
                out.append(tok.encode("utf-8"))
    elif kind == "sentencepiece":
        out = []
        for i, tok in enumerate(tokens):
            if len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">") and _BYTE_FALLBACK.fullmatch(tok):
                out.append(bytes([int(tok[3:5], 16)]))
                fallback[i] = True
            else:
                out.append(tok.replace(SPM_MARKER, " ").encode("utf-8"))
    elif kind == "wordpiece":
        out = [tok[2:].encode("utf-8") if tok.startswith("##") else tok.encode("utf-8") for tok in tokens]
    else:
        out = [tok.encode("utf-8") for tok in tokens]
    for idx in added_plain:  # added tokens match their literal content in text
        if 0 <= idx < len(tokens) and not fallback[idx]:
            out[idx] = tokens[idx].encode("utf-8")
    for idx in np.flatnonzero(special).tolist():
        out[idx] = b""
    return out, fallback


def _detect_dummy_prefix(tokenizer, kind: str, token_bytes: list) -> str:
    if kind != "sentencepiece":
        return "none"

    def encoded(text: str) -> bytes:
        ids = tokenizer.encode(text, add_special_tokens=False)
        return b"".join(token_bytes[i] for i in ids)

    plain = encoded("x") == b" x"
    spaced = encoded(" x") == b"  x"
    if plain and spaced:
        return "always"
    if plain:
        return "unless_space"
    return "none"


def _build_profile(tokenizer) -> TokenizerProfile:
    tokens = _vocab_strings(tokenizer)
    size = len(tokens)
    special, roles, added_plain = _special_ids(tokenizer, size)
    special |= np.array([t == "" for t in tokens], dtype=bool)
    probe_ids = tokenizer.encode(_PROBE, add_special_tokens=False)
    kind, marker = _detect_kind(tokens, [tokens[i] for i in probe_ids])
    token_bytes, fallback = _token_bytes(kind, tokens, special, added_plain)
    lengths = np.fromiter((len(b) for b in token_bytes), dtype=np.int32, count=size)
    return TokenizerProfile(
        name=str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__),
        kind=kind,
        marker=marker,
        tokens=tokens,
        token_bytes=token_bytes,
        byte_lengths=lengths,
        is_special=special,
        is_byte_fallback=fallback,
        dummy_prefix=_detect_dummy_prefix(tokenizer, kind, token_bytes),
        special_ids=roles,
    )
