"""The user cache folder, output-folder checks and atomic writes.

Shared by every step that writes to disk or reuses earlier work (pipeline commands, on-disk
caches, resumable runs), so that they all agree on three rules:

- a cache or a resume is keyed by *content* fingerprints (:mod:`fusekernels.fingerprint`: file
  bytes, the tokenizer's full definition, the texts), never by object ids or paths alone, so
  identical runs reuse and any change invalidates;
- an output folder must be empty or absent, must not be or overlap an input, and must be
  writable — checked *before* the work starts;
- files and folders appear only once completely written (write to a temporary sibling, then
  ``os.replace``), so an interrupted write never leaves a half file under the final name;
- what is written is checked when it is read back: every saved dataset folder, extraction shard
  and map-cache file records a content checksum (:func:`write_checksums`), verified on reuse
  (:func:`verify_checksums`); a damaged cache entry is recomputed, a damaged output named
  (:class:`DamagedFileError`);
- temporary folders of killed runs do not pile up: each temporary sibling is held under a lock
  while it is written, and the next run removes those older than itself that no live process
  holds (:func:`remove_stale_temps`).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator

CHECKSUM_NAME = "fusekernels_checksums.json"
_log = logging.getLogger("fusekernels")


class DamagedFileError(ValueError):
    """A file (or saved dataset) exists but cannot be read back: truncated, corrupted, or of the
    wrong structure. ``path`` names it; the message says what is wrong."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        super().__init__(f"{path} is damaged or not a valid file of its kind: {reason}")


class StoragePathError(OSError):
    """A cache or lock path that cannot be used (a folder where a file is expected, a file where a
    folder is, no write permission). The message is one line naming the path and what to do."""




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
    source = "$FUSEKERNELS_CACHE"
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "fusekernels")
        source = "$XDG_CACHE_HOME" if os.environ.get("XDG_CACHE_HOME") else "the default cache folder"
    path = Path(root, *parts)
    return ensure_folder(path, what="cache folder", hint=f"set $FUSEKERNELS_CACHE to a writable folder (now "
                                                         f"{source}: {root})")


_USABLE_FOLDERS: set = set()


def ensure_folder(path: str | os.PathLike, *, what: str = "folder", hint: str = "choose another folder") -> Path:
    """Create ``path`` (with its parents) and check that files can be written in it; raise a
    one-line :class:`StoragePathError` naming it and ``hint`` (what to do) otherwise.
    Checked once per process and path."""
    path = Path(path)
    if path in _USABLE_FOLDERS and path.is_dir():
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in [path, *path.parents] if p.exists() and not p.is_dir()), None)
        why = f": {blocker} is a file, not a folder" if blocker is not None else f" ({exc.strerror or exc})"
        raise StoragePathError(f"{what} {path} cannot be created{why}; {hint}") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".fusekernels-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise StoragePathError(f"{what} {path} is not writable ({exc.strerror or exc}); {hint}") from None
    _USABLE_FOLDERS.add(path)
    return path


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def check_output_dir(out: str | os.PathLike, *, inputs: Iterable = (), arg: str = "--out",
                     resume_marker: str | None = None, ignore: Iterable[str] = ()) -> Path:
    """Refuse an output folder that is non-empty, is a file, overlaps an input, or is not writable.

    Call it before any work. ``inputs`` are the paths the command reads (files or folders); the
    output may not be, contain or lie inside any of them. ``resume_marker``: a file name whose
    presence makes a non-empty folder acceptable (an earlier run of a resumable command, whose
    own metadata check decides). ``ignore``: file names that do not count (a command's own
    metadata, which it rewrites). Raises ``ValueError`` / ``PermissionError`` naming ``arg``.
    Returns the resolved path (not created).
    """
    path = Path(out).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{arg} {out} exists and is not a folder")
    ignore = set(ignore)
    if (path.is_dir() and any(p.name not in ignore for p in path.iterdir())
            and not (resume_marker and (path / resume_marker).is_file())):
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
    rename, on failure it is removed and ``final`` is untouched. Temporary siblings left by killed
    runs are removed first (:func:`remove_stale_temps`)."""
    final = Path(final).resolve()
    ensure_folder(final.parent, what="output folder", hint="choose another output path")
    prefix = f".{final.name}.tmp-"
    remove_stale_temps(final.parent, prefix)
    with owned_temp(final.parent, prefix) as tmp:
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
    prefix = f".{final.name}.tmp-"
    remove_stale_temps(final.parent, prefix)
    with owned_temp(final.parent, prefix, folder=False) as tmp:
        try:
            with open(tmp, mode) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, _umask_mode(0o666))
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


# ------------------------------------------------------------------------------ locks and temps
_IMPORT_TIME = time.time()
LOCK_HINT = "remove it, or use another cache folder ($FUSEKERNELS_CACHE or --cache-dir)"


def process_start_time() -> float:
    """When this process started using this module (its import; seconds since the epoch): later
    than the process's own start, exact to the microsecond (the system's process start times are
    rounded to a second), and before any temporary this process makes through it."""
    return _IMPORT_TIME


@contextlib.contextmanager
def locked(path: str | os.PathLike, *, hint: str = LOCK_HINT) -> Iterator[None]:
    """Hold an exclusive inter-process lock on the file ``path`` (``filelock.FileLock``: ``flock``
    on POSIX) while inside; a path that cannot be a lock file (a folder, an unwritable place)
    raises a one-line :class:`StoragePathError` naming it and ``hint``."""
    path = Path(path)
    lock = _filelock().FileLock(str(path))
    try:
        lock.acquire()
    except OSError as exc:
        what = "is a folder" if path.is_dir() else f"cannot be used ({exc.strerror or exc})"
        raise StoragePathError(f"lock file {path} {what}: {hint}") from None
    try:
        yield
    finally:
        lock.release()


def _filelock():
    from ._optional import require

    return require("filelock", "inter-process locks")


def _try_lock(path: Path, *, errors: bool = False):
    """An acquired ``FileLock`` on ``path``, or None when another process holds it (or, unless
    ``errors``, when it cannot be opened; with ``errors`` that raises :class:`StoragePathError`)."""
    filelock = _filelock()
    lock = filelock.FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        return None
    except OSError as exc:
        if errors:
            what = "is a folder" if path.is_dir() else f"cannot be created ({exc.strerror or exc})"
            raise StoragePathError(f"lock file {path} {what}: choose another output or cache folder") from None
        return None
    return lock


@contextlib.contextmanager
def owned_temp(parent: str | os.PathLike, prefix: str, *, folder: bool = True) -> Iterator[Path]:
    """A new temporary folder (or empty file, ``folder=False``) ``parent/<prefix><random>``, held
    under the lock file ``<that path>.lock`` from before it exists until the block exits, so that
    :func:`remove_stale_temps` of another process never takes it for the leftover of a killed run.
    The caller moves or deletes the temporary itself; the lock file is removed on exit."""
    parent = Path(parent)
    while True:
        name = f"{prefix}{secrets.token_hex(4)}"
        lock_path = parent / f"{name}.lock"
        lock = _try_lock(lock_path, errors=True)
        if lock is None:
            continue  # taken by someone else (a name collision): draw another
        tmp = parent / name
        try:
            if folder:
                tmp.mkdir()
            else:
                os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            _drop_lock(lock, lock_path)
            continue
        except BaseException:
            _drop_lock(lock, lock_path)
            raise
        break
    try:
        yield tmp
    finally:
        _drop_lock(lock, lock_path)


def _drop_lock(lock, lock_path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(lock_path)
    lock.release()


def remove_stale_temps(parent: str | os.PathLike, prefix: str, *, marker: str = "") -> int:
    """Remove the temporaries ``parent/<prefix>...`` (names also containing ``marker``) of killed
    runs: those older than this process that no live process holds (see :func:`owned_temp`).
    Logs one line when it removes something; returns how many it removed."""
    parent = Path(parent)
    try:
        names = [e.name for e in os.scandir(parent) if e.name.startswith(prefix) and marker in e.name]
    except OSError:
        return 0
    before = process_start_time()
    present = set(names)
    removed = 0
    for name in names:
        if name.endswith(".lock") and name[:-5] in present:
            continue  # handled with its temporary
        path = parent / name
        lock_path = path if name.endswith(".lock") else parent / f"{name}.lock"
        try:
            if path.lstat().st_mtime >= before:
                continue  # possibly being created right now by a run that started after this one
        except FileNotFoundError:
            continue
        lock = _try_lock(lock_path)
        if lock is None:
            continue  # a live run holds it
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            elif path != lock_path:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            removed += 1
        finally:
            _drop_lock(lock, lock_path)
    if removed:
        _log.warning("fusekernels: removed %d temporary item(s) %s* left in %s by interrupted runs", removed,
                     prefix, parent)
    return removed


@contextlib.contextmanager
def registered_run(folder: str | os.PathLike) -> Iterator[None]:
    """Mark this process as a live user of ``folder`` (a lock file ``.run-<pid>-<time>.lock``) while
    inside, for temporaries that third-party code creates there without a lock of their own
    (``Dataset.map`` writes ``tmp*`` files next to its cache file): on entry, the ``tmp*`` files
    older than every live user of the folder (and than this process) are removed."""
    folder = Path(folder)
    started = time.time_ns()
    own = folder / f".run-{os.getpid()}-{started}-{secrets.token_hex(2)}.lock"
    lock = _try_lock(own, errors=True)
    if lock is None:
        raise StoragePathError(f"lock file {own} is held by another process: {LOCK_HINT}")
    try:
        _remove_unowned_temps(folder, own)
        yield
    finally:
        _drop_lock(lock, own)


def _remove_unowned_temps(folder: Path, own: Path) -> None:
    starts = [process_start_time()]
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if not (entry.name.startswith(".run-") and entry.name.endswith(".lock")) or entry.path == str(own):
            continue
        try:
            started = int(entry.name.split("-")[2]) / 1e9
        except (IndexError, ValueError):
            started = 0.0
        lock = _try_lock(Path(entry.path))
        if lock is None:
            starts.append(started)  # live
        else:
            _drop_lock(lock, Path(entry.path))  # its process is gone
    before = min(starts)
    removed = 0
    for entry in entries:
        if not entry.name.startswith("tmp") or not entry.is_file(follow_symlinks=False):
            continue
        with contextlib.suppress(FileNotFoundError):
            if entry.stat(follow_symlinks=False).st_mtime < before:
                os.unlink(entry.path)
                removed += 1
    if removed:
        _log.warning("fusekernels: removed %d temporary file(s) tmp* left in %s by interrupted runs", removed, folder)


# ------------------------------------------------------------------------------------ checksums
CHECKSUM_ALGORITHM = "xxh3_128"


def content_digest(path: str | os.PathLike) -> str:
    """xxh3-128 hex digest of a file's bytes (memory-mapped: no copy; several GB/s)."""
    import mmap

    from ._optional import require

    h = require("xxhash", "content checksums").xxh3_128()
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
                h.update(view)
    return h.hexdigest()


def write_checksums(folder: str | os.PathLike, *, tag: str | None = None) -> None:
    """Record the size and :func:`content_digest` of every file under ``folder`` in
    ``folder/fusekernels_checksums.json`` (call it on a freshly written folder, before it is moved
    into place). ``tag``: a string a reader must expect (e.g. which extraction a shard belongs to)."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUM_NAME)
    record = {"algorithm": CHECKSUM_ALGORITHM, "tag": tag,
              "files": {p.relative_to(folder).as_posix(): [p.stat().st_size, content_digest(p)] for p in files}}
    with open(folder / CHECKSUM_NAME, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1, sort_keys=True)


def verify_checksums(folder: str | os.PathLike, *, tag: str | None = None, required: bool = False) -> bool:
    """Check every file recorded by :func:`write_checksums` in ``folder``; raise
    :class:`DamagedFileError` naming the first file that is missing or changed (or the record
    itself when ``tag`` differs or, with ``required``, when there is none). False when there is no
    record (a folder written without one)."""
    folder = Path(folder)
    record_path = folder / CHECKSUM_NAME
    if not record_path.is_file():
        if required:
            raise DamagedFileError(record_path, "missing: the folder's content cannot be checked")
        return False
    files = _checksum_record(record_path, tag)
    for name, (size, digest) in files.items():
        _check_file(folder / name, size, digest)
    return True


def _checksum_record(path: Path, tag) -> dict:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        files = record["files"]
        ok = (record["algorithm"] == CHECKSUM_ALGORITHM and isinstance(files, dict)
              and all(isinstance(v, list) and len(v) == 2 for v in files.values()))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise DamagedFileError(path, f"not a valid checksum record ({type(exc).__name__})") from None
    if not ok:
        raise DamagedFileError(path, "not a valid checksum record")
    if tag is not None and record.get("tag") != tag:
        raise DamagedFileError(path.parent, "it was written for another output (its checksum record belongs to "
                                            "a different extraction)")
    return files


def _check_file(path: Path, size: int, digest: str) -> None:
    try:
        actual = path.stat().st_size
    except FileNotFoundError:
        raise DamagedFileError(path, "missing") from None
    if actual != size:
        raise DamagedFileError(path, f"{actual} bytes where {size} were written (truncated or overwritten)")
    if content_digest(path) != digest:
        raise DamagedFileError(path, "its content changed since it was written (checksum mismatch)")


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


def cached_map(dataset, function=None, *, label: str, fingerprint: str, **map_kwargs):
    """``dataset.map(function, **map_kwargs)`` with its result kept in the user cache under a
    deterministic name (:func:`map_cache_file`; in memory for an in-memory ``dataset``) and reused
    by an identical later run.

    The result files get a checksum record (``<cache file>.sums.json``) when written; before a
    reuse they are verified, and a damaged file (truncated, changed bytes) or one without a record
    (an interrupted run, an older version) is removed and recomputed, with one log line naming
    it. Runs computing the same result wait for each other (a lock per cache file) and never
    remove each other's temporary files (:func:`registered_run`).
    """
    cache_file = map_cache_file(dataset, fingerprint, label)
    if cache_file is None:
        return dataset.map(function, new_fingerprint=fingerprint, **map_kwargs)
    path = Path(cache_file)
    with registered_run(path.parent), locked(path.with_name(path.name + ".lock")):
        sums = path.with_name(path.name + ".sums.json")
        _drop_unverified_map_cache(path, sums)
        result = dataset.map(function, new_fingerprint=fingerprint, cache_file_name=cache_file, **map_kwargs)
        written = [Path(f["filename"]) for f in result.cache_files]
        if not sums.is_file() and written and all(_is_map_cache_part(f, path) for f in written):
            record = {"algorithm": CHECKSUM_ALGORITHM,
                      "files": {f.name: [f.stat().st_size, content_digest(f)] for f in written}}
            atomic_write_json(sums, record)
    return result


def _is_map_cache_part(file: Path, path: Path) -> bool:
    """``file`` is ``path`` or one of the per-process parts ``<stem>_NNNNN_of_NNNNN<suffix>`` of a
    ``Dataset.map(num_proc=...)`` written to ``path``."""
    if file.parent != path.parent:
        return False
    return file.name == path.name or (file.name.startswith(path.stem + "_") and file.name.endswith(path.suffix)
                                      and "_of_" in file.name[len(path.stem):])


def _drop_unverified_map_cache(path: Path, sums: Path) -> None:
    try:
        parts = [path.parent / e.name for e in os.scandir(path.parent)
                 if _is_map_cache_part(path.parent / e.name, path)]
    except OSError:
        return
    if not parts:
        if sums.exists():
            sums.unlink()
        return
    reason = None
    if not sums.is_file():
        reason = "it has no checksum record (an interrupted run or an older version wrote it)"
    else:
        try:
            for name, (size, digest) in _checksum_record(sums, None).items():
                _check_file(path.parent / name, size, digest)
        except DamagedFileError as err:
            reason = str(err)
    if reason is None:
        return
    _log.warning(f"fusekernels: map cache file {path} cannot be reused: {reason}; recomputing it")
    for part in [*parts, sums]:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()


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
