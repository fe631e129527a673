"""Loading the inputs of the pipeline steps from paths (used by the CLI and the demo).

- Tokenizers: a Hugging Face folder, a ``.gguf`` file, a SentencePiece ``.model`` file, or the
  name of a tokenizer shipped in an installed asset package (``fusekernels.tokenization.assets``,
  e.g. ``mistral-v1``, ``smollm2``).
- Models: a Hugging Face folder or a ``.gguf`` file (dequantised to float; needs ``gguf``).
- Text: a saved ``datasets`` folder, an extraction output folder, or a ``.jsonl``/``.json``/
  ``.parquet``/``.csv``/``.txt`` file (``.txt``: one document per line).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .._optional import require

TEXT_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}


def load_tokenizer(spec: str | os.PathLike):
    """A ``PreTrainedTokenizerBase`` from a path or an asset name (see module docstring)."""
    require("transformers", "load_tokenizer")
    from transformers import AutoTokenizer

    path = Path(spec)
    if path.is_dir():
        return _loaded(path, AutoTokenizer.from_pretrained, str(path))
    if path.is_file() and path.suffix == ".gguf":
        return _loaded(path, AutoTokenizer.from_pretrained, str(path.parent), gguf_file=path.name)
    if path.is_file() and path.suffix == ".model":
        # transformers reads a SentencePiece model only as <folder>/tokenizer.model
        folder = Path(tempfile.mkdtemp(prefix="fusekernels-spm-"))
        shutil.copyfile(path, folder / "tokenizer.model")
        return _loaded(path, AutoTokenizer.from_pretrained, str(folder))
    if path.exists():
        raise ValueError(f"cannot load a tokenizer from {path}: expected a folder, a .gguf or a .model file")
    from fusekernels.tokenization.assets import TOKENIZER_NAMES
    from fusekernels.tokenization.assets import load_tokenizer as load_asset

    if str(spec) in TOKENIZER_NAMES:
        return load_asset(str(spec))
    raise FileNotFoundError(f"tokenizer {str(spec)!r} is neither an existing path nor one of the packaged "
                            f"tokenizers {TOKENIZER_NAMES}")


def check_model_path(spec: str | os.PathLike) -> Path:
    """``FileNotFoundError`` / ``ValueError`` naming ``spec`` unless it is a folder or a .gguf file."""
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path}")
    if not (path.is_dir() or (path.is_file() and path.suffix == ".gguf")):
        raise ValueError(f"cannot load a model from {path}: expected a folder or a .gguf file")
    return path


def load_model(spec: str | os.PathLike, **kwargs):
    """``AutoModelForCausalLM`` from a folder or a ``.gguf`` file."""
    require("transformers", "load_model")
    from transformers import AutoModelForCausalLM

    path = check_model_path(spec)
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
