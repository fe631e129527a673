"""``fusekernels pack``: aligned sequences -> fixed-length training blocks."""
from __future__ import annotations

from dataclasses import dataclass, field

from .common import UserError, check_out, command_parser, save_dataset
from .data_options import data_option
from .options import add_options, from_namespace

HELP = "Pack aligned sequences into fixed-length training blocks."


def _metric_levels():
    from ..pipeline.pack import METRIC_LEVELS

    return METRIC_LEVELS


@dataclass(kw_only=True)
class PackArguments:
    data: str = field(metadata={"help": "align output folder"})
    block_size: int = field(metadata={"min": 1, "help": "tokens per training block"})
    keep_tail: bool = field(default=False, metadata={"help": "keep the last, shorter block of each map batch"})
    metric_level: str = field(default="sequence", metadata={"choices": _metric_levels,
                                                            "help": "CE metric per block (sequence) or per token"})
    logits_dtype: str = data_option("logits_dtype")
    out: str = field(metadata={"help": "output dataset folder"})
    num_proc: int | None = field(default=None, metadata={"min": 1,
                                                          "help": "worker processes for datasets.map"})


def build_parser():
    parser = command_parser("pack", HELP)
    add_options(parser, PackArguments)
    return parser


def run(args) -> None:
    from ..pipeline.io import load_rows
    from ..pipeline.pack import pack_sequences

    a = from_namespace(PackArguments, args)
    check_out(a.out, a.data)
    data = load_rows(a.data)
    out = pack_sequences(data, a.block_size, drop_last=not a.keep_tail, metric_level=a.metric_level,
                         logits_dtype=a.logits_dtype, num_proc=a.num_proc)
    if len(out) == 0:
        raise UserError(f"no block of {a.block_size} tokens could be formed; lower --block-size or use --keep-tail")
    save_dataset(out, a.out)
    print(f"pack: {len(data)} sequences -> {len(out)} blocks of {a.block_size} tokens in {a.out}")
