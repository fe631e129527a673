"""``fusekernels vocab-map``: the blending -> base vocabulary map of a tokenizer pair (MinED)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .common import command_parser, existing
from .options import add_options, from_namespace

HELP = "Blending -> base vocabulary map (nearest base token by edit distance)."


def _modes():
    from ..tokenization.vocab_map import VOCAB_MAP_MODES

    return VOCAB_MAP_MODES


@dataclass(kw_only=True)
class VocabMapArguments:
    base_tokenizer: str = field(metadata={"help": "base (target) tokenizer"})
    blend_tokenizer: str = field(metadata={"help": "blending (teacher) tokenizer"})
    mode: str = field(default="default", metadata={
        "choices": _modes, "help": "MinED map, or MinED with the co-occurrence refinement of ties"})
    corpus: str | None = field(default=None, metadata={"help": "texts for --mode co_occurrence"})
    out: str = field(metadata={"help": ".json (published format) or .npz file"})
    text_column: str = field(default="text", metadata={"help": "column holding the text"})


def build_parser():
    parser = command_parser("vocab-map", HELP)
    add_options(parser, VocabMapArguments)
    return parser


def run(args) -> None:
    from ..pipeline.io import load_rows, load_tokenizer
    from ..storage import check_output_file
    from ..tokenization.vocab_map import build_vocab_map

    a = from_namespace(VocabMapArguments, args)
    check_output_file(a.out, suffixes=(".json", ".npz"), inputs=existing(a.base_tokenizer, a.blend_tokenizer, a.corpus))
    corpus = load_rows(a.corpus)[a.text_column] if a.corpus else None
    vmap = build_vocab_map(load_tokenizer(a.base_tokenizer), load_tokenizer(a.blend_tokenizer), mode=a.mode,
                           corpus=corpus)
    out = Path(a.out)
    (vmap.save_json if out.suffix.lower() == ".json" else vmap.save_npz)(out)  # atomic writes
    print(f"vocab-map: {len(vmap)} blending tokens, {vmap.exact_rate:.1%} exact, written to {out}")
