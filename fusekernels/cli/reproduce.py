"""``fusekernels reproduce``: the FuseLLM / FuseChat tables in miniature (options: ReproduceConfig)."""
from __future__ import annotations

import sys

from .common import command_parser
from .options import add_options, from_namespace

HELP = ("The FuseLLM / FuseChat tables in miniature (opt-in, long): CLM-only, single-teacher distillation, FuseLLM "
        "MinCE / AvgCE, FuseChat VaRM / linear merges, and the first teacher continually trained as the target; "
        "held-out perplexity mean +- std over seeds.")


def build_parser():
    from ..recipes.reproduce import ReproduceConfig

    parser = command_parser("reproduce", HELP)
    add_options(parser, ReproduceConfig)
    return parser


def run(args) -> None:
    from ..recipes.reproduce import ReproduceConfig, run_reproduce

    run_reproduce(from_namespace(ReproduceConfig, args), command="fusekernels " + " ".join(sys.argv[1:]))
