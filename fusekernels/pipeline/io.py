"""Loading the inputs of the pipeline steps from paths (used by the CLI and the demo).

- Tokenizers: a Hugging Face folder, a ``.gguf`` file (converted once, then reloaded from the user
  cache: :mod:`fusekernels.tokenization.tokenizer_cache`), a SentencePiece ``.model`` file, or the
  name of a tokenizer shipped in an installed asset package (``fusekernels.tokenization.assets``,
  e.g. ``mistral-v1``, ``smollm2``).
- Models: a Hugging Face folder, a ``.gguf`` file (dequantised to float; needs ``gguf``), the name
  of a model shipped in an installed asset package (``smollm2``, ``gemma3``:
  :mod:`fusekernels.pipeline.bundled`; a local path of that name wins), or a Hub model id
  (``org/name``) that is no local path: its files are fetched as ``from_pretrained`` fetches them
  (``huggingface_hub``, into the Hub cache) and used as a local folder, so that
  fingerprints and caches see files; offline (``HF_HUB_OFFLINE=1``) only the Hub cache is read,
  and an id missing there is a one-line ``FileNotFoundError``. Tokenizers take Hub ids too.
- Text: a saved ``datasets`` folder, an extraction output folder, or a ``.jsonl``/``.json``/
  ``.parquet``/``.csv``/``.txt`` file (``.txt``: one document per line).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .._optional import require

# Weights dtypes a model may be loaded in (or a merge written in).
MODEL_DTYPES = ("float32", "bfloat16", "float16")
# What a model / tokenizer given as a Hub id needs from its repository (configs, weights, vocabularies).
HUB_TOKENIZER_FILES = ["*.json", "*.model", "*.tiktoken", "*.txt", "*.jinja"]
HUB_MODEL_FILES = HUB_TOKENIZER_FILES + ["*.safetensors"]
TEXT_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}


def load_tokenizer(spec: str | os.PathLike):
    """A ``PreTrainedTokenizerBase`` from a path, an asset name or a Hub model id (see module docstring)."""
    require("transformers", "load_tokenizer")
    from transformers import AutoTokenizer

    path = Path(spec)
    if path.is_dir():  # local_files_only: transformers never asks the Hub about a local tokenizer
        return _loaded(path, AutoTokenizer.from_pretrained, str(path), local_files_only=True)
    if path.is_file() and path.suffix == ".gguf":
        # converting a GGUF vocabulary takes seconds to tens of seconds: done once per file version
        from fusekernels.tokenization.tokenizer_cache import cached_tokenizer

        return cached_tokenizer(path, lambda: _loaded(path, AutoTokenizer.from_pretrained, str(path.parent),
                                                      gguf_file=path.name, local_files_only=True), tag="gguf")
    if path.is_file() and path.suffix == ".model":
        # transformers reads a SentencePiece model only as <folder>/tokenizer.model
        folder = Path(tempfile.mkdtemp(prefix="fusekernels-spm-"))
        shutil.copyfile(path, folder / "tokenizer.model")
        return _loaded(path, AutoTokenizer.from_pretrained, str(folder), local_files_only=True)
    if path.exists():
        raise ValueError(f"cannot load a tokenizer from {path}: expected a folder, a .gguf or a .model file")
    from fusekernels.tokenization.assets import TOKENIZER_NAMES
    from fusekernels.tokenization.assets import load_tokenizer as load_asset

    if str(spec) in TOKENIZER_NAMES:
        return load_asset(str(spec))
    what = f"tokenizer {str(spec)!r} is neither an existing path nor one of the packaged tokenizers {TOKENIZER_NAMES}"
    repo_id = hub_model_id(spec)
    if repo_id is None:
        raise FileNotFoundError(what)
    folder = hub_snapshot(repo_id, patterns=HUB_TOKENIZER_FILES, missing=what + "; as a Hub model id")
    return _loaded(folder, AutoTokenizer.from_pretrained, str(folder), local_files_only=True)


def model_kind(spec: str | os.PathLike) -> str:
    """How a model argument is read: ``"path"`` (an existing path, or one that looks like a path
    and is missing), ``"bundled"`` (a name of :data:`fusekernels.pipeline.bundled.MODELS` that is
    no existing path) or ``"hub"`` (a Hub model id that is no existing path)."""
    from .bundled import MODELS

    if Path(spec).exists():
        return "path"
    if str(spec) in MODELS:
        return "bundled"
    return "hub" if hub_model_id(spec) is not None else "path"


def check_model_path(spec: str | os.PathLike, *, arg: str = "model") -> Path | str:
    """Check a model argument without loading or downloading anything, and return it: an existing
    folder or ``.gguf`` file (as a ``Path``), a bundled model name whose package is installed, or a
    Hub model id (online: as given, ``from_pretrained`` fetches it; offline, ``HF_HUB_OFFLINE=1``:
    only when it is in the Hub cache). Otherwise ``FileNotFoundError`` / ``ValueError`` /
    ``AssetUnavailable`` naming ``arg`` and ``spec``, one line."""
    from .bundled import MODELS, check_bundled_model

    kind = model_kind(spec)
    if kind == "bundled":
        from fusekernels.tokenization.assets import AssetUnavailable

        try:
            check_bundled_model(str(spec))
        except AssetUnavailable as err:
            raise AssetUnavailable(f"{arg} {str(spec)!r}: {err}") from None
        return str(spec)
    if kind == "hub":
        if hub_offline():
            hub_snapshot(str(spec), patterns=["config.json"],
                         missing=f"{arg} {str(spec)!r} is no local path nor a bundled model ({', '.join(MODELS)}); "
                                 "as a Hub model id")
        return str(spec)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"{arg} not found: {path} (a model is a folder, a .gguf file, a bundled model name: "
                                f"{', '.join(MODELS)}, or a Hub model id)")
    if not (path.is_dir() or (path.is_file() and path.suffix == ".gguf")):
        raise ValueError(f"cannot load a model from {path} ({arg}): expected a folder or a .gguf file")
    return path


def resolve_model(spec: str | os.PathLike, *, progress: bool = True) -> Path:
    """The local folder or ``.gguf`` file of a model given as a path, a bundled model name (its
    GGUF file; Gemma-3 is assembled into the user cache on first use, with a progress bar when
    ``progress``) or a Hub model id (fetched into the Hub cache, or found there offline). A local
    path wins over a name. ``FileNotFoundError`` / ``AssetUnavailable`` naming ``spec`` otherwise."""
    kind = model_kind(spec)
    if kind == "bundled":
        from .bundled import bundled_model

        return bundled_model(str(spec), progress=progress)
    if kind == "path":
        return check_model_path(spec)
    repo_id = hub_model_id(spec)
    folder = hub_snapshot(repo_id, patterns=HUB_MODEL_FILES,
                          missing=f"model not found: {repo_id!r} is no local path, and as a Hub model id")
    if not any(folder.glob("*.safetensors")):  # weights published as PyTorch .bin files only
        folder = hub_snapshot(repo_id, patterns=HUB_MODEL_FILES + ["*.bin"],
                              missing=f"model not found: {repo_id!r} is no local path, and as a Hub model id")
    return folder


def model_tokenizer(spec: str | os.PathLike, resolved: str | os.PathLike | None = None) -> str | os.PathLike:
    """The tokenizer argument that belongs to a model argument: the bundled tokenizer of a bundled
    model (built once and cached), else the model itself (``resolved`` when given: its folder or
    GGUF file)."""
    from .bundled import MODELS

    if model_kind(spec) == "bundled":
        return MODELS[str(spec)].tokenizer
    return resolved if resolved is not None else spec


def hub_model_id(spec) -> str | None:
    """``spec`` as a Hub model id (``name`` or ``org/name``), or None when it is an existing path,
    has a file suffix the loaders read (``.gguf``, ``.model``), or is no valid id."""
    text = str(spec)
    if Path(text).exists() or text.endswith((".gguf", ".model")):
        return None
    try:
        from huggingface_hub.utils import validate_repo_id
    except ImportError:
        return None
    try:
        validate_repo_id(text)
    except ValueError:
        return None
    return text


def hub_offline() -> bool:
    """True when the Hub may not be contacted (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return constants.is_offline_mode() or any(f.upper() in ("1", "ON", "YES", "TRUE") for f in flags)


def hub_snapshot(repo_id: str, *, patterns: list[str], missing: str) -> Path:
    """The local snapshot folder of the Hub repository ``repo_id`` holding the files that match
    ``patterns`` (downloaded as ``from_pretrained`` downloads them; offline: the Hub cache only).
    ``missing`` starts the one-line ``FileNotFoundError`` when it cannot be had."""
    require("huggingface_hub", f"loading {repo_id!r} from the Hub")
    from huggingface_hub import snapshot_download

    offline = hub_offline()
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=offline))
    except Exception as exc:  # offline cache misses, unknown repositories, network errors
        first = (str(exc).strip().splitlines() or [""])[0]
        why = (" it is not in the local Hub cache and HF_HUB_OFFLINE is set" if offline else
               f" it cannot be fetched ({type(exc).__name__}: {first})")
        raise FileNotFoundError(missing + why) from None


def load_model(spec: str | os.PathLike, **kwargs):
    """``AutoModelForCausalLM`` from a folder, a ``.gguf`` file, a bundled model name or a Hub model id."""
    require("transformers", "load_model")
    from transformers import AutoModelForCausalLM

    path = resolve_model(spec)
    if path.is_dir():
        return _loaded(path, AutoModelForCausalLM.from_pretrained, str(path), **kwargs)
    return _loaded(path, AutoModelForCausalLM.from_pretrained, str(path.parent), gguf_file=path.name, **kwargs)


def _loaded(path, load, *args, **kwargs):
    """``load(*args, **kwargs)`` for a model or tokenizer at ``path``; a file that exists but cannot
    be parsed (truncated weights, broken JSON, ...) becomes a ``DamagedFileError`` naming ``path``.
    Missing packages (ImportError), missing and unreadable files keep their own errors."""
    from fusekernels.storage import DamagedFileError

    try:
        return load(*args, **kwargs)
    except (ImportError, FileNotFoundError, PermissionError, DamagedFileError):
        raise
    except Exception as exc:  # parsers raise their own types (SafetensorError, tokenizers' Exception)
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise DamagedFileError(path, reason) from None


def load_rows(spec: str | os.PathLike):
    """A ``datasets.Dataset`` from a saved folder, an extraction output or a data file.

    Raises ``FileNotFoundError`` for a missing path and :class:`fusekernels.storage.DamagedFileError`
    (a ``ValueError`` naming the path) for a file or saved dataset that cannot be read: a truncated
    arrow shard, a broken ``.jsonl`` line, a corrupted ``dataset_info.json``, or a file of a folder
    written by this package whose content checksum no longer matches.
    """
    require("datasets", "load_rows")
    import datasets

    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"data not found: {path}")
    if path.is_dir():
        from .extract import META_NAME, load_extracted

        if (path / META_NAME).is_file():
            return _readable(path, load_extracted, path)
        if (path / "dataset_info.json").is_file() or (path / "state.json").is_file():
            from fusekernels.storage import verify_checksums

            verify_checksums(path)  # folders written by this package record them: damage is named
            return _readable(path, datasets.load_from_disk, str(path))
        raise ValueError(f"{path} is not a saved dataset (no dataset_info.json) nor an extraction output")
    builder = TEXT_SUFFIXES.get(path.suffix.lower())
    if builder is None:
        raise ValueError(f"unsupported data file {path.name}: use one of {sorted(TEXT_SUFFIXES)}")
    return _readable(path, datasets.load_dataset, builder, data_files=str(path), split="train")


def _readable(path, load, *args, **kwargs):
    """``load(*args, **kwargs)``, with any failure to parse what is on disk reported as a
    ``DamagedFileError`` naming ``path`` (missing / unreadable paths keep their own errors)."""
    from datasets.exceptions import DatasetsError

    from fusekernels.storage import DamagedFileError

    try:
        return load(*args, **kwargs)
    except (FileNotFoundError, PermissionError, DamagedFileError):
        raise
    except (OSError, ValueError, KeyError, TypeError, EOFError, DatasetsError) as exc:
        cause = exc.__cause__ or exc.__context__ if isinstance(exc, DatasetsError) else exc
        reason = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
        raise DamagedFileError(path, reason.splitlines()[0] if reason else type(exc).__name__) from None
