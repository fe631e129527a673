"""Disk cache of teacher outputs (the top-k of :func:`extract_teacher_topk`), shared across runs.

Extraction is the most expensive step of the pipeline (a forward pass of every teacher over every
text), and the same teacher over the same texts gives the same outputs, so they are computed
once. An entry is keyed by everything that determines them:

- the model: the content fingerprint of its file or folder when it is given as a path (it is then
  loaded only on a miss), else of its in-memory config and weights; plus the load options;
- the tokenizer's definition (vocabulary, pipeline, special tokens; not flags such as
  ``add_bos_token`` that extraction does not use), the texts (content and order), ``k``, ``max_length``,
  ``logits_dtype``, ``per_token_ce``, the start tokens prepended to each text (``start_tokens``), and
  the cache format version.

Layout under ``cache_dir("teacher-outputs")`` (``$FUSEKERNELS_CACHE``): ``<key>/`` is a finished
entry (an :func:`extract_teacher_topk` output folder plus ``cache_key.json``); ``<key>.partial/``
is an extraction under way or interrupted: it is written shard by shard and a later run resumes
it from its finished shards; it becomes ``<key>/`` in one rename once complete, so an interrupted
write never leaves a half entry under the final name. ``<key>.lock`` serialises processes that
want the same entry (the second one waits, then reuses it). A final folder whose key file is
missing or different (a hand-copied or damaged folder), or one of whose shards fails its content
checksum (every shard records one when written, see :func:`fusekernels.storage.write_checksums`;
a shard copied from another entry fails too), is removed and recomputed.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from fusekernels.fingerprint import (
    file_fingerprint,
    json_fingerprint,
    model_fingerprint,
    texts_fingerprint,
    tokenizer_fingerprint,
)
from fusekernels.storage import DamagedFileError, atomic_write_json, cache_dir, ensure_folder, locked

from . import defaults

CACHE_FORMAT = 2  # 2: shards carry content checksums
logger = logging.getLogger(__name__)
KEY_NAME = "cache_key.json"
SHARD_SIZE = defaults.SHARD_SIZE  # rows per resumable shard (and length-grouping window) of an entry
_UNUSED_FLAGS = ("add_bos_token", "add_eos_token", "padding_side", "chat_template")


@dataclass
class CacheInfo:
    """What :func:`cached_extract` did: ``status`` is ``"reused"``, ``"computed"`` or ``"resumed"``
    (an interrupted write was finished) or ``"disabled"``; ``path`` is the entry (None if disabled)."""
    status: str
    path: Path | None
    key: str | None

    @property
    def reused(self) -> bool:
        return self.status == "reused"


def extraction_key(model, tokenizer, texts, *, k: int, max_length: int, logits_dtype: str = "float16",
                   per_token_ce: bool = False, load_kwargs: dict | None = None, start_tokens: str = "model") -> dict:
    """The fields that determine a teacher's outputs (see module docstring), as a JSON dict.

    ``model`` is a path (file or folder) or an in-memory ``torch.nn.Module``."""
    from .extract import START_TOKENS, start_token_ids

    if start_tokens not in START_TOKENS:
        raise ValueError(f"start_tokens must be one of {START_TOKENS}, got {start_tokens!r}")
    if isinstance(model, (str, os.PathLike)):
        model_fp = {"file": file_fingerprint(model)}
    else:
        model_fp = {"weights": model_fingerprint(model)}
    return {"format": CACHE_FORMAT, "model": model_fp, "load": {k_: str(v) for k_, v in (load_kwargs or {}).items()},
            # extraction tokenizes without special tokens, pads by hand and appends the EOS id (in the
            # special-token map): these flags cannot change its outputs, and a tokenizer saved and
            # reloaded may not keep them (Gemma-3's add_bos_token)
            "tokenizer": tokenizer_fingerprint(tokenizer, ignore=_UNUSED_FLAGS), "texts": texts_fingerprint(texts),
            "num_texts": len(texts),
            "k": k, "max_length": max_length, "logits_dtype": logits_dtype, "per_token_ce": bool(per_token_ce),
            # the ids prepended to the model's input (its BOS and the like; [] = the text alone)
            "start_tokens": start_token_ids(tokenizer) if start_tokens == "model" else []}


def cached_extract(model, tokenizer, dataset, *, k: int = 10, max_length: int, batch_size: int = 8,
                   text_column: str = "text", logits_dtype: str = "float16", per_token_ce: bool = False,
                   load_kwargs: dict | None = None, cache: bool | str | os.PathLike = True,
                   progress: bool = True, name: str | None = None, start_tokens: str = "model"):
    """:func:`extract_teacher_topk` through the disk cache. Returns ``(dataset, CacheInfo)``.

    Args:
        model: a causal LM, or a model argument (folder, ``.gguf``, bundled model name or Hub
            model id, see :func:`fusekernels.pipeline.io.resolve_model`; loaded with
            :func:`fusekernels.pipeline.io.load_model` and ``load_kwargs`` only on a cache miss).
        dataset: a ``datasets.Dataset`` with the string column ``text_column``; the output keeps
            only that column next to the extraction columns.
        max_length: truncation length (required: it is part of the key).
        cache: ``True`` (the user cache folder), a folder, or ``False`` (no cache, plain extraction).
        name: the teacher's name in the progress bars and the log lines (``fusekernels.pipeline.cache``
            logger, info level) that say when an entry is reused, resumed or written.
        start_tokens: "model" (default) or "published", see :func:`extract_teacher_topk`.
    """
    from .extract import extract_teacher_topk, load_extracted

    if text_column not in dataset.column_names:
        raise ValueError(f"dataset has no column {text_column!r} (columns: {dataset.column_names})")
    if not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length must be an int >= 1, got {max_length!r}")
    from .extract import model_name

    label = name or model_name(model) or type(model).__name__
    if isinstance(model, (str, os.PathLike)):
        from .io import resolve_model

        model = resolve_model(model)  # a name or Hub id becomes its local file / folder (keyed by its files)
    texts = dataset.select_columns([text_column])
    run = dict(k=k, batch_size=batch_size, max_length=max_length, text_column=text_column,
               logits_dtype=logits_dtype, per_token_ce=per_token_ce, progress=progress, start_tokens=start_tokens,
               name=label)
    if cache is False or cache is None:
        # the same shards as a cached run: texts are batched by length within a shard
        return (extract_teacher_topk(_load(model, load_kwargs), tokenizer, texts, shard_size=SHARD_SIZE, **run),
                CacheInfo("disabled", None, None))

    key = extraction_key(model, tokenizer, texts[text_column], k=k, max_length=max_length, logits_dtype=logits_dtype,
                         per_token_ce=per_token_ce, load_kwargs=load_kwargs, start_tokens=start_tokens)
    digest = json_fingerprint(key)
    root = cache_dir("teacher-outputs") if cache is True else ensure_folder(
        cache, what="teacher-output cache folder", hint="pass a writable folder as the cache (--cache-dir)")
    final, partial = root / digest, root / f"{digest}.partial"
    with locked(root / f"{digest}.lock"):
        if final.is_dir():
            rows = _load_entry(final, key, load_extracted, label)
            if rows is not None:
                logger.info(f"{label}: teacher outputs reused from the cache ({final})")
                return rows, CacheInfo("reused", final, digest)
            shutil.rmtree(final)
        status = "resumed" if _has_shards(partial) else "computed"
        if status == "resumed":
            logger.info(f"{label}: resuming an interrupted cache write ({partial})")
        try:
            rows = extract_teacher_topk(_load(model, load_kwargs), tokenizer, texts, output_dir=partial,
                                        shard_size=SHARD_SIZE, **run)
        except ValueError as err:  # shards of an older format or a damaged shard / metadata file: start over
            if "different extraction" not in str(err) and not isinstance(err, DamagedFileError):
                raise
            logger.warning(f"{label}: the interrupted cache write {partial} cannot be resumed ({err}); recomputing it")
            shutil.rmtree(partial)
            status = "computed"
            rows = extract_teacher_topk(_load(model, load_kwargs), tokenizer, texts, output_dir=partial,
                                        shard_size=SHARD_SIZE, **run)
        atomic_write_json(partial / KEY_NAME, key)
        os.replace(partial, final)  # the entry appears complete or not at all
        logger.info(f"{label}: teacher outputs written to the cache ({final})")
        return load_extracted(final, verify=False), CacheInfo(status, final, digest)  # just written


def _load(model, load_kwargs):
    if isinstance(model, (str, os.PathLike)):
        from .io import load_model

        return load_model(model, **(load_kwargs or {})).eval()
    return model


def _load_entry(path: Path, key: dict, load_extracted, label):
    """The entry's rows (content checksums verified), or None, with one log line naming the
    reason, when its key file is missing / different or a shard is damaged or unreadable."""
    try:
        if json.loads((path / KEY_NAME).read_text()) != key:
            reason = "its key file differs (a stale or hand-copied entry)"
        else:
            return load_extracted(path, require_checksums=True)
    except DamagedFileError as err:
        reason = str(err)
    except (OSError, ValueError, KeyError) as err:
        reason = f"{type(err).__name__}: {err}"
    except Exception as err:  # datasets raises its own errors on damaged Arrow files
        if not type(err).__module__.startswith(("datasets", "pyarrow")):
            raise
        reason = f"{type(err).__name__}: {err}"
    logger.warning(f"{label}: cache entry {path} cannot be reused "
                   f"({reason.splitlines()[0] if reason else 'unreadable'}); recomputing it")
    return None


def _has_shards(path: Path) -> bool:
    return path.is_dir() and any(p.name.startswith("shard-") for p in path.iterdir())
