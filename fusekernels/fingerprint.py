"""Content fingerprints: every cache key, resume check and ``datasets`` map fingerprint of the
package comes from here.

A fingerprint is a hex digest (32 characters unless stated) of *content* (file bytes, a
tokenizer's full definition, texts, a model's tensors, a configuration), never of object ids or
paths alone, so identical inputs give identical keys in every process and any change gives a new
one. Hashes are SHA-256, truncated.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

_CHUNK = 1 << 20
_FILE_DIGESTS: dict = {}  # (path, size, mtime_ns) -> digest, so a process hashes each file once
_PROFILE_DIGESTS: dict = {}  # id(profile) -> (profile, digest)
_PROFILE_LOCK = threading.Lock()


def _hasher():
    return hashlib.sha256()


def file_fingerprint(path: str | os.PathLike) -> str:
    """Content hash (hex, 32 chars) of a file, or of a folder's files (relative names + bytes).

    Cached in-process by ``(path, size, mtime)``; a 250 MB model file hashes in well under a second.
    """
    path = Path(path).resolve()
    if path.is_dir():
        h = _hasher()
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(child.relative_to(path)).encode("utf-8", "surrogatepass") + b"\0")
            h.update(file_fingerprint(child).encode())
        return h.hexdigest()[:32]
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    digest = _FILE_DIGESTS.get(key)
    if digest is None:
        h = _hasher()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(_CHUNK), b""):
                h.update(block)
        digest = _FILE_DIGESTS[key] = h.hexdigest()[:32]
    return digest


def tokenizer_fingerprint(tokenizer, *, ignore: Iterable[str] = ()) -> str:
    """Content hash (hex, 32 chars) of everything that decides how a tokenizer maps text to ids.

    Fast tokenizers: their full serialised definition (vocabulary, merges, normaliser,
    pre-tokeniser, post-processor, added tokens). Slow ones: class, vocabulary, special tokens and
    the SentencePiece model proto when there is one. ``ignore`` names flags among
    ``add_bos_token``, ``add_eos_token``, ``padding_side`` and ``chat_template`` that the caller's use
    does not depend on (e.g. ``add_bos_token`` when it tokenizes with ``add_special_tokens=False``).
    """
    h = _hasher()
    h.update(type(tokenizer).__name__.encode() + b"\0")
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode("utf-8", "surrogatepass"))
    else:
        vocab = tokenizer.get_vocab()
        for token, idx in sorted(vocab.items(), key=lambda item: item[1]):
            h.update(f"{idx}\t".encode() + token.encode("utf-8", "surrogatepass") + b"\0")
        sp_model = getattr(tokenizer, "sp_model", None)
        if sp_model is not None and hasattr(sp_model, "serialized_model_proto"):
            h.update(sp_model.serialized_model_proto())
    special = {k: str(v) for k, v in sorted(getattr(tokenizer, "special_tokens_map", {}).items())}
    h.update(json.dumps(special, sort_keys=True).encode())
    for name in ("add_bos_token", "add_eos_token", "padding_side", "chat_template"):
        if name in ignore:
            continue
        h.update(f"{name}={getattr(tokenizer, name, None)!r}\0".encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:32]


def model_fingerprint(model) -> str:
    """Content hash (hex, 32 chars) of an in-memory ``torch.nn.Module``: its class, its config (when
    it has one) and every tensor of its ``state_dict`` (name, dtype, shape, bytes).

    Prefer :func:`file_fingerprint` of the model's file when there is one: hashing a loaded model
    reads every parameter (about 1 s per GB)."""
    import torch

    h = _hasher()
    h.update(type(model).__name__.encode() + b"\0")
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        h.update(config.to_json_string(use_diff=False).encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        # raw bytes through a uint8 view: works for bf16 and other dtypes numpy lacks
        h.update(np.ascontiguousarray(tensor.view(-1).view(torch.uint8).numpy()).data if tensor.numel() else b"")
    return h.hexdigest()[:32]


def texts_fingerprint(texts: Iterable) -> str:
    """Content hash (hex, 32 chars) of a sequence of strings, order included."""
    h = _hasher()
    for text in texts:
        h.update(str(text).encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:32]


def json_fingerprint(obj) -> str:
    """Hash (hex, 32 chars) of a JSON-serialisable configuration (key order does not matter)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:32]


def tokens_fingerprint(tokens: Sequence[str]) -> str:
    """Hash of a sequence of token strings, order included (a vocabulary's id -> string table)."""
    h = _hasher()
    for t in tokens:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()[:32]


def token_bytes_fingerprint(profile) -> str:
    """Hash of a :class:`~fusekernels.tokenization.TokenizerProfile`'s token bytes and special
    flags: what a byte-span table depends on."""
    h = _hasher()
    for data, special in zip(profile.token_bytes, profile.is_special.tolist()):
        h.update(len(data).to_bytes(4, "little"))
        h.update(data)
        h.update(b"\x01" if special else b"\x00")
    return h.hexdigest()[:32]


def profile_fingerprint(profile) -> str:
    """Hash of everything a :class:`~fusekernels.tokenization.TokenizerProfile` feeds into
    alignment (token strings and bytes, special and byte-fallback flags, kind, marker, dummy
    prefix, special roles); cached per profile object. Deterministic across processes, unlike
    ``id(profile)``."""
    with _PROFILE_LOCK:
        hit = _PROFILE_DIGESTS.get(id(profile))
        if hit is not None and hit[0] is profile:
            return hit[1]
    h = _hasher()
    h.update(repr((profile.kind, profile.marker, profile.dummy_prefix, sorted(profile.special_ids.items()),
                   profile.vocab_size)).encode("utf-8", "surrogatepass"))
    h.update("\0".join(profile.tokens).encode("utf-8", "surrogatepass"))
    h.update(b"\1".join(profile.token_bytes))
    h.update(np.ascontiguousarray(profile.byte_lengths, dtype=np.int32).tobytes())
    h.update(np.packbits(np.asarray(profile.is_special, dtype=bool)).tobytes())
    h.update(np.packbits(np.asarray(profile.is_byte_fallback, dtype=bool)).tobytes())
    digest = h.hexdigest()[:32]
    with _PROFILE_LOCK:
        _PROFILE_DIGESTS[id(profile)] = (profile, digest)
    return digest


def vocab_map_fingerprint(vocab_map) -> str:
    """Hash of a soft-mode vocabulary map: a ``{blend id: base id}`` dict or a
    :class:`~fusekernels.tokenization.VocabMap` (its base ids and method); ``"none"`` for None."""
    if vocab_map is None:
        return "none"
    if isinstance(vocab_map, dict):
        return json_fingerprint(sorted(vocab_map.items()))
    return hashlib.sha256(np.ascontiguousarray(vocab_map.base_ids, dtype=np.int32).tobytes()
                          + str(getattr(vocab_map, "method", "")).encode()).hexdigest()[:32]


def map_fingerprint(dataset, parts: Iterable, *, salt: str = "align-arrow-1") -> str:
    """``new_fingerprint`` (16 characters) of a ``Dataset.map`` over ``dataset``: its own
    fingerprint, the package version, ``salt`` (the step's format version) and the ``repr`` of
    every output-shaping part (options and content fingerprints, never object ids)."""
    from fusekernels import __version__

    h = hashlib.sha256(str(dataset._fingerprint).encode())
    h.update(f"fusekernels {__version__} {salt}".encode())
    for p in parts:
        h.update(repr(p).encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:16]
