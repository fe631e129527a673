"""``fusekernels split``: documents too long for any tokenizer -> windows that fit every one."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .common import check_out, command_parser, save_dataset
from .data_options import data_option
from .options import add_options, from_namespace

HELP = "Split documents too long for any tokenizer into windows that fit every one."
logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class SplitArguments:
    data: str = field(metadata={"help": "texts: .jsonl/.json/.parquet/.csv/.txt file or saved dataset"})
    tokenizer: list[str] = field(metadata={"help": "every model's tokenizer (folder, .gguf, .model or packaged name)"})
    block_size: int = field(metadata={"min": 1,
                                      "help": "model context length (prepare: --block-size); texts longer than "
                                              "block size - margin tokens are cut"})
    margin: int = data_option("margin")
    out: str = field(metadata={"help": "output dataset folder"})
    text_column: str = field(default="text", metadata={"help": "column holding the text"})
    num_proc: int | None = field(default=None, metadata={"min": 1,
                                                          "help": "worker processes for datasets.map"})


def build_parser():
    parser = command_parser("split", HELP)
    add_options(parser, SplitArguments)
    return parser


def run(args) -> None:
    from ..pipeline.io import load_rows, load_tokenizer
    from ..pipeline.split import split_long_texts

    a = from_namespace(SplitArguments, args)
    check_out(a.out, a.data, *a.tokenizer)
    data = load_rows(a.data)
    tokenizers = [load_tokenizer(t) for t in a.tokenizer]
    out = split_long_texts(data, tokenizers, a.block_size, text_column=a.text_column, margin=a.margin,
                           num_proc=a.num_proc)
    save_dataset(out, a.out)
    print(f"split: {len(data)} documents -> {len(out)} texts in {a.out}")
