"""``fusekernels assets``: the bundled models, tokenizers and sample-text corpora.

Without a corpus it lists every bundled name (models: ``--teacher smollm2``, ``--model gemma3``;
tokenizers: ``--student-tokenizer mistral-v1``; corpora), what each is, where it lives and
whether it is installed. With a corpus it writes sample texts to try the pipeline on::

    fusekernels assets
    fusekernels assets kjv --out docs.jsonl --docs 200 --skip 400

(see :mod:`fusekernels.pipeline.bundled`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import options
from .common import UserError, command_parser
from .options import add_options, from_namespace

HELP = ("List the bundled models, tokenizers and text corpora (what, where, installed?); `assets CORPUS --out "
        "FILE.jsonl` writes sample texts from a corpus.")


def _corpora():
    from ..pipeline.bundled import CORPORA

    return tuple(CORPORA)


@dataclass(kw_only=True)
class AssetsArguments:
    corpus: str | None = field(default=None, metadata={
        "choices": _corpora, "help": "corpus to write sample texts from (also the first argument: "
                                     "fusekernels assets kjv --out docs.jsonl)"})
    out: str | None = field(default=None, metadata={"help": "the new .jsonl file for the texts ({\"text\": ...} "
                                                            "per line); an existing file is refused"})
    docs: int = field(default=200, metadata={"min": 1, "help": "documents to write"})
    skip: int = field(default=0, metadata={"min": 0, "help": "documents skipped first (e.g. for held-out texts "
                                                             "that follow the training ones)"})
    verses_per_doc: int = field(default=4, metadata={"min": 1, "help": "kjv: consecutive verses per document"})


def build_parser():
    parser = command_parser("assets", HELP)
    add_options(parser, AssetsArguments)
    return parser


def parse(argv: list[str]):
    """The options of ``fusekernels assets``; a corpus name as the first argument is ``--corpus``."""
    argv = [str(a) for a in argv]
    if argv and argv[0] in _corpora():
        argv = ["--corpus", argv[0], *argv[1:]]
    elif argv and not argv[0].startswith("-") and not argv[0].endswith((".yaml", ".yml", ".json")):
        raise UserError(f"unknown corpus {argv[0]!r}: one of {', '.join(_corpora())} (or a .yaml / .json config file)")
    return options.parse(build_parser(), argv)


def listing() -> list[str]:
    """The lines printed without a corpus: every bundled name, what it is, where and its state."""
    from ..pipeline import bundled

    lines = ["models (--teacher, --model, --base-model, --pivot, --sources):"]
    for name, model in bundled.MODELS.items():
        where, state = bundled.model_status(name)
        lines += [f"  {name:<12} {model.description}", f"  {'':<12} {state}; {where}"]
    lines += ["tokenizers (--tokenizer, --student-tokenizer, --teacher-tokenizer; CONFIG:TOKENIZER students):"]
    for name, what in bundled.TOKENIZERS.items():
        where, state = bundled.tokenizer_status(name)
        lines += [f"  {name:<12} {what}", f"  {'':<12} {state}; {where}"]
    lines += ["corpora (fusekernels assets CORPUS --out FILE.jsonl --docs N [--skip N]):"]
    lines += [f"  {name:<12} {what}" for name, what in bundled.CORPORA.items()]
    return lines


def run(args) -> None:
    from ..pipeline.bundled import corpus_texts, write_texts

    a = from_namespace(AssetsArguments, args)
    if a.corpus is None:
        if a.out is not None:
            raise UserError("--out needs a corpus: fusekernels assets CORPUS --out FILE.jsonl "
                            f"(corpora: {', '.join(_corpora())})")
        print("\n".join(listing()))
        return
    if a.out is None:
        raise UserError(f"writing the {a.corpus} corpus needs --out FILE.jsonl")
    texts = corpus_texts(a.corpus, docs=a.docs, skip=a.skip, verses_per_doc=a.verses_per_doc)
    write_texts(texts, a.out)
    print(f"assets: {len(texts)} {a.corpus} documents ({sum(map(len, texts))} characters) written to {a.out}")
