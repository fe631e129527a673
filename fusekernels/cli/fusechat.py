"""``fusekernels fusechat``: FuseChat's pairwise recipe in one resumable run (options: PairwiseConfig)."""
from __future__ import annotations

from .common import command_parser
from .options import add_options, from_namespace

HELP = ("FuseChat's pairwise recipe in one resumable run: pivot + each source -> N target models -> merged model, "
        "with a summary table.")


def build_parser():
    from ..recipes.fusechat import PairwiseConfig

    parser = command_parser("fusechat", HELP)
    add_options(parser, PairwiseConfig)
    return parser


def run(args) -> None:
    from ..recipes.fusechat import PairwiseConfig, run_pairwise

    run_pairwise(from_namespace(PairwiseConfig, args))
