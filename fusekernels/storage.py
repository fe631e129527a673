"""Fingerprints, the user cache folder, output-folder checks and atomic writes.

Shared by every step that writes to disk or reuses earlier work (pipeline commands, on-disk
caches, resumable runs), so that they all agree on three rules:

- a cache or a resume is keyed by *content* fingerprints (file bytes, the tokenizer's full
  definition, the texts), never by object ids or paths alone, so identical runs reuse and any
  change invalidates;
- an output folder must be empty or absent, must not be or overlap an input, and must be
  writable — checked *before* the work starts;
- files and folders appear only once completely written (write to a temporary sibling, then
  ``os.replace``), so an interrupted write never leaves a half file under the final name.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

_CHUNK = 1 << 20


class DamagedFileError(ValueError):
    """A file (or saved dataset) exists but cannot be read back: truncated, corrupted, or of the
    wrong structure. ``path`` names it; the message says what is wrong."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        super().__init__(f"{path} is damaged or not a valid file of its kind: {reason}")
_FILE_DIGESTS: dict = {}  # (path, size, mtime_ns) -> digest, so a process hashes each file once


def _umask_mode(base: int) -> int:
    """``base`` less the process umask: the mode ``open``/``mkdir`` would give (``mkstemp`` and
    ``mkdtemp`` use 0600 / 0700, too strict for shared outputs and caches)."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


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
    import numpy as np
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


def cache_dir(*parts: str) -> Path:
    """The user cache folder (created): ``$FUSEKERNELS_CACHE``, else ``$XDG_CACHE_HOME/fusekernels``,
    else ``~/.cache/fusekernels``; ``parts`` name a subfolder."""
    root = os.environ.get("FUSEKERNELS_CACHE")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "fusekernels")
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def check_output_dir(out: str | os.PathLike, *, inputs: Iterable = (), arg: str = "--out",
                     resume_marker: str | None = None) -> Path:
    """Refuse an output folder that is non-empty, is a file, overlaps an input, or is not writable.

    Call it before any work. ``inputs`` are the paths the command reads (files or folders); the
    output may not be, contain or lie inside any of them. ``resume_marker``: a file name whose
    presence makes a non-empty folder acceptable (an earlier run of a resumable command, whose
    own metadata check decides). Raises ``ValueError`` / ``PermissionError`` naming ``arg``.
    Returns the resolved path (not created).
    """
    path = Path(out).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{arg} {out} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not (resume_marker and (path / resume_marker).is_file()):
        raise ValueError(f"{arg} {out} exists and is not empty")
    for given in inputs:
        if given is None:
            continue
        src = Path(given).expanduser().resolve()
        if _overlaps(path, src):
            raise ValueError(f"{arg} {out} overlaps the input {given}: write to a separate folder")
    check_writable(path.parent if not path.exists() else path, arg=arg, target=out)
    return path


def check_output_file(out: str | os.PathLike, *, suffixes: Iterable[str], inputs: Iterable = (),
                      arg: str = "--out") -> Path:
    """:func:`check_output_dir` for a single output file: its suffix must be one of ``suffixes``,
    it must not exist yet, be an input or lie inside one, and its folder must be writable."""
    path = Path(out).expanduser().resolve()
    suffixes = tuple(suffixes)
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"{arg} must end in {' or '.join(suffixes)}, got {Path(out).name!r}")
    if path.exists():
        raise ValueError(f"{arg} {out} already exists: choose a new file name or delete it")
    for given in inputs:
        if given is None:
            continue
        src = Path(given).expanduser().resolve()
        if _overlaps(path, src):
            raise ValueError(f"{arg} {out} overlaps the input {given}: write to a separate place")
    check_writable(path.parent, arg=arg, target=out)
    return path


def check_writable(folder: str | os.PathLike, *, arg: str = "--out", target=None) -> None:
    """Raise ``PermissionError`` naming ``arg`` unless a file can be created in ``folder``'s
    nearest existing ancestor."""
    folder = Path(folder)
    while not folder.exists():
        folder = folder.parent
    try:
        fd, probe = tempfile.mkstemp(prefix=".fusekernels-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise PermissionError(f"{arg} {target if target is not None else folder}: cannot write in {folder} "
                              f"({exc.strerror or exc})") from None


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``final`` (absent or empty) in one
    rename, on failure it is removed and ``final`` is untouched."""
    final = Path(final).resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        tmp.chmod(_umask_mode(0o777))
        yield tmp
        if final.is_dir() and not any(final.iterdir()):
            final.rmdir()
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Open a temporary sibling of ``final`` for writing; on success it is fsynced and renamed to
    ``final``, on failure removed (``final`` keeps its old content or stays absent)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=final.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode(0o666))
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(final: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``final`` atomically."""
    with atomic_file(final, "w") as f:
        f.write(text)


def atomic_write_json(final: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented, key-sorted JSON to ``final`` atomically."""
    atomic_write_text(final, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def map_cache_file(dataset, fingerprint: str, label: str) -> str | None:
    """Where ``Dataset.map`` on ``dataset`` should write its result: ``None`` (kept in memory) for
    an in-memory dataset, else ``<cache_dir>/datasets/<label>-<fingerprint>.arrow``, never the
    input's own folder (where ``datasets`` would put it). With a deterministic ``fingerprint`` a
    repeated identical run finds and reuses the file."""
    if not getattr(dataset, "cache_files", None):
        return None
    return str(cache_dir("datasets") / f"{label}-{fingerprint}.arrow")


def cached_arrays(kind: str, key: str, build, *, keys: Iterable[str] = ()) -> dict:
    """``build()`` (a dict of numpy arrays), stored once as ``<cache_dir>/maps/<kind>-<key>.npz``
    and loaded from there by every later call, in any process.

    ``key`` must be a content fingerprint of everything the arrays depend on. The file is
    written atomically; an unreadable file, or one lacking any of ``keys``, is rebuilt, and an
    unwritable cache folder only costs the rebuild next time.
    """
    import zipfile

    import numpy as np

    path = cache_dir("maps") / f"{kind}-{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                if set(keys) <= set(data.files):
                    return {name: data[name] for name in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            pass  # damaged: rebuilt and replaced below
    arrays = build()
    try:
        with atomic_file(path) as f:
            np.savez(f, **arrays)
    except OSError:
        pass
    return arrays
