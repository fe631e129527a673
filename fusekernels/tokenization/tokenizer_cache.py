"""Converted tokenizers kept in the user cache, so that each process does not convert them again.

Building a fast tokenizer from a GGUF file (or from tiktoken ranks, a Tekken JSON) takes seconds to
tens of seconds; reloading the saved ``tokenizer.json`` takes a fraction of that. The converted
tokenizer is saved once under ``cache_dir("tokenizers") / <tag>-<identity>-tf<transformers>``:

- ``identity`` is an xxh3-128 digest of the source file's resolved path, size, ``st_mtime_ns`` and
  its first and last MiB, so a replaced or edited file gets a new entry (and the digest stays cheap
  for multi-GB GGUF models: only 2 MiB are read);
- the entry is written into a temporary folder and renamed into place under a file lock: a reader
  sees a complete entry or none, and concurrent first loads convert once.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

__all__ = ["file_identity", "cached_tokenizer", "load_saved"]

_EDGE = 1 << 20  # bytes hashed at each end of the source file


def file_identity(path: str | os.PathLike) -> str:
    """Hex digest (32 chars) naming the file ``path`` as it is now: resolved path, size,
    modification time (ns) and the content of its first and last MiB."""
    from .._optional import require

    path = Path(path).resolve()
    stat = path.stat()
    h = require("xxhash", "tokenizer cache keys").xxh3_128()
    h.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    with open(path, "rb") as f:
        h.update(f.read(_EDGE))
        if stat.st_size > _EDGE:
            f.seek(max(_EDGE, stat.st_size - _EDGE))
            h.update(f.read(_EDGE))
    return h.hexdigest()


def load_saved(folder: str | os.PathLike):
    """The tokenizer saved in ``folder`` (``AutoTokenizer``; local files only: the Hub is never asked)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def cached_tokenizer(source: str | os.PathLike, build: Callable[[], object], *, tag: str):
    """The tokenizer ``build()`` makes from the file ``source``, converted at most once per file
    version: later calls (in any process) reload the saved entry with :func:`load_saved`.

    ``tag`` names the kind of source (``"gguf"``, an asset name) in the entry's folder name.
    A cache folder that cannot be written raises :class:`fusekernels.storage.StoragePathError`.
    """
    import transformers

    from ..storage import cache_dir, locked, owned_temp, remove_stale_temps

    key = f"{tag}-{file_identity(source)}-tf{transformers.__version__}"
    root = cache_dir("tokenizers")
    target = root / key
    tok = _reload(target)
    if tok is not None:
        return tok
    with locked(root / f"{key}.lock"):
        tok = _reload(target)  # another process may have converted it while we waited
        if tok is not None:
            return tok
        remove_stale_temps(root, f".{key}.tmp")
        built = build()
        with owned_temp(root, f".{key}.tmp") as tmp:
            try:
                built.save_pretrained(str(tmp))
                if target.exists():  # a damaged entry (see _reload)
                    shutil.rmtree(target)
                os.replace(tmp, target)  # a folder rename: readers see all of it or nothing
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    # the saved form, so that the first and every later call return the same tokenizer
    return load_saved(target)


def _reload(target: Path):
    """The tokenizer saved in ``target``, or None when there is none or it cannot be read (an
    entry damaged on disk is then converted again and replaced)."""
    if not (target / "tokenizer.json").is_file():
        return None
    try:
        return load_saved(target)
    except Exception:  # any parse error of a damaged entry: tokenizers raises its own types
        return None
