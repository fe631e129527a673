"""The user cache folder, output-folder checks and atomic writes.

Shared by every step that writes to disk or reuses earlier work (pipeline commands, on-disk
caches, resumable runs), so that they all agree on three rules:

- a cache or a resume is keyed by *content* fingerprints (:mod:`fusekernels.fingerprint`: file
  bytes, the tokenizer's full definition, the texts), never by object ids or paths alone, so
  identical runs reuse and any change invalidates;
- an output folder must be empty or absent, must not be or overlap an input, and must be
  writable — checked *before* the work starts;
- files and folders appear only once completely written (write to a temporary sibling, then
  ``os.replace``), so an interrupted write never leaves a half file under the final name.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator


class DamagedFileError(ValueError):
    """A file (or saved dataset) exists but cannot be read back: truncated, corrupted, or of the
    wrong structure. ``path`` names it; the message says what is wrong."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        super().__init__(f"{path} is damaged or not a valid file of its kind: {reason}")


def _umask_mode(base: int) -> int:
    """``base`` less the process umask: the mode ``open``/``mkdir`` would give (``mkstemp`` and
    ``mkdtemp`` use 0600 / 0700, too strict for shared outputs and caches)."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


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
