"""``fusekernels demo``: two pretrained LLMs fused into a tiny student, end to end (options: DemoConfig)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from .common import check_out, command_parser
from .options import add_options, from_namespace

HELP = ("End-to-end FuseLLM demo: SmolLM2-135M and Gemma-3-270M fused into a tiny Llama (Mistral tokenizer) on KJV "
        "text, next to CLM-only training; JSON results and PNG plots.")


@dataclass(kw_only=True)
class DemoOutput:
    json: bool = field(default=False, metadata={"help": "print the results as JSON at the end"})


def build_parser():
    from ..recipes.demo import DemoConfig

    parser = command_parser("demo", HELP)
    add_options(parser, DemoConfig)
    add_options(parser, DemoOutput)
    return parser


def run(args) -> None:
    from ..recipes import demo

    config = from_namespace(demo.DemoConfig, args)
    if config.out:
        check_out(config.out)
    results = demo.run_demo(config)
    if from_namespace(DemoOutput, args).json:
        print(json.dumps(results, indent=2))
