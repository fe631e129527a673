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
        return AutoTokenizer.from_pretrained(str(path))
    if path.is_file() and path.suffix == ".gguf":
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    if path.is_file() and path.suffix == ".model":
        # transformers reads a SentencePiece model only as <folder>/tokenizer.model
        folder = Path(tempfile.mkdtemp(prefix="fusekernels-spm-"))
        shutil.copyfile(path, folder / "tokenizer.model")
        return AutoTokenizer.from_pretrained(str(folder))
    if path.exists():
        raise ValueError(f"cannot load a tokenizer from {path}: expected a folder, a .gguf or a .model file")
    from fusekernels.tokenization.assets import TOKENIZER_NAMES
    from fusekernels.tokenization.assets import load_tokenizer as load_asset

    if str(spec) in TOKENIZER_NAMES:
        return load_asset(str(spec))
    raise FileNotFoundError(f"tokenizer {str(spec)!r} is neither an existing path nor one of the packaged "
                            f"tokenizers {TOKENIZER_NAMES}")


def load_model(spec: str | os.PathLike, **kwargs):
    """``AutoModelForCausalLM`` from a folder or a ``.gguf`` file."""
    require("transformers", "load_model")
    from transformers import AutoModelForCausalLM

    path = Path(spec)
    if path.is_dir():
        return AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    if path.is_file() and path.suffix == ".gguf":
        return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, **kwargs)
    if path.exists():
        raise ValueError(f"cannot load a model from {path}: expected a folder or a .gguf file")
    raise FileNotFoundError(f"model not found: {path}")


def load_rows(spec: str | os.PathLike):
    """A ``datasets.Dataset`` from a saved folder, an extraction output or a data file."""
    require("datasets", "load_rows")
    import datasets

    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"data not found: {path}")
    if path.is_dir():
        from .extract import META_NAME, load_extracted

        if (path / META_NAME).is_file():
            return load_extracted(path)
        if (path / "dataset_info.json").is_file() or (path / "state.json").is_file():
            return datasets.load_from_disk(str(path))
        raise ValueError(f"{path} is not a saved dataset (no dataset_info.json) nor an extraction output")
    builder = TEXT_SUFFIXES.get(path.suffix.lower())
    if builder is None:
        raise ValueError(f"unsupported data file {path.name}: use one of {sorted(TEXT_SUFFIXES)}")
    return datasets.load_dataset(builder, data_files=str(path), split="train")
