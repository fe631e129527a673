"""``fusekernels`` command line: the FuseLLM / FuseChat data pipeline, training, merging and recipes.

Each pipeline step reads the previous step's output folder and writes its own::

    fusekernels split   --data docs.jsonl --tokenizer base_dir teacher.gguf --block-size 2048 --out split/
    fusekernels extract --model base_dir --data split/ --out base_topk/
    fusekernels extract --model teacher.gguf --data split/ --out teacher_topk/
    fusekernels align   --base base_topk/ --base-tokenizer base_dir --teacher teacher_topk/ \\
                        --teacher-tokenizer teacher.gguf --out aligned/
    fusekernels pack    --data aligned/ --block-size 2048 --out packed/
    fusekernels train   --model base_dir --data packed/ --output_dir student/ --max_steps 1000  # or: train run.yaml
    fusekernels merge   --targets student_a/ student_b/ --base base_dir --out merged/

Every command takes a YAML / JSON config file right after its name (``fusekernels pack pack.yaml``;
keys are the option names, flags after the file override it). Each command lives in its own
module ``fusekernels.cli.<command>`` whose options are generated from its config dataclasses
(:mod:`fusekernels.cli.options`). User errors (missing files, bad arguments, malformed data)
print one line and exit with status 2; ``--traceback`` or ``--debug`` (before or after the command)
shows tracebacks; ``-v`` / ``-q`` set how much is logged.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys
import textwrap

from .._optional import extra_hint
from .common import EXIT_USER_ERROR, UserError, add_global_options, user_errors

__all__ = ["main", "parse_args", "build_parser", "COMMANDS", "UserError", "EXIT_USER_ERROR"]

# command -> module of fusekernels.cli (each has HELP, build_parser() and run(args))
COMMANDS = {
    "split": "split",
    "extract": "extract",
    "vocab-map": "vocab_map",
    "align": "align",
    "pack": "pack",
    "prepare": "prepare",
    "train": "train",
    "merge": "merge",
    "fusechat": "fusechat",
    "demo": "demo",
    "reproduce": "reproduce",
    "assets": "assets",
}
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
TRACEBACK_FLAGS = ("--traceback", "--debug")


def command_module(name: str):
    """The module of command ``name`` (``fusekernels.cli.<module>``)."""
    return importlib.import_module(f"{__name__}.{COMMANDS[name]}")


def _version() -> str:
    from .. import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: general options and the command; the command's own arguments are
    parsed by its module's parser (:func:`parse_args`)."""
    listing = "\n".join(textwrap.fill(command_module(name).HELP, width=100, initial_indent=f"  {name:<11}",
                                       subsequent_indent=" " * 13) for name in COMMANDS)
    parser = argparse.ArgumentParser(
        prog="fusekernels", formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s [-h] [--version] [--traceback] [-v] [-q] COMMAND [CONFIG] [options]",
        description="FuseLLM / FuseChat data pipeline, fusion training, model merging and end-to-end recipes.",
        epilog=f"commands:\n{listing}\n\n`fusekernels COMMAND --help` lists a command's options; every command "
               "also takes a YAML / JSON config file right after its name.")
    add_global_options(parser, top=True)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("command", metavar="COMMAND", choices=list(COMMANDS), help="one of the commands below")
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def parse_args(argv=None) -> tuple[str, argparse.Namespace]:
    """``(command, options)`` from a full command line (general options may come anywhere)."""
    top = build_parser().parse_args(argv)
    return top.command, _parse_command(top)


def _parse_command(top: argparse.Namespace) -> argparse.Namespace:
    module = command_module(top.command)
    if hasattr(module, "parse"):
        args = module.parse(top.args)
    else:
        from .options import parse

        args = parse(module.build_parser(), top.args)
    args.command = top.command
    args.traceback = top.traceback or getattr(args, "traceback", False)
    args.verbosity = getattr(args, "verbosity", None) or top.verbosity
    return args


@contextlib.contextmanager
def logging_to_stderr(verbosity: str = "info"):
    """Route the ``fusekernels`` logger to stderr at ``verbosity`` (debug / info / warning) while
    a command runs: one line per message, its progress and decisions. Restored afterwards."""
    logger = logging.getLogger("fusekernels")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(_LEVELS[verbosity])
    try:
        yield logger
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


def main(argv=None) -> int:
    """Entry point of the ``fusekernels`` console script and ``python -m fusekernels``."""
    from .. import _interrupt

    top = build_parser().parse_args(argv)
    command, args = top.command, top
    _interrupt.install()  # a Ctrl-C swallowed by a finaliser still stops the command
    try:
        with extra_hint():
            args = _parse_command(top)  # (a config file may be missing or hold bad values)
            with logging_to_stderr(args.verbosity):
                command_module(command).run(args)
        _interrupt.check_interrupted()
    except user_errors() as err:
        # (args is still the top-level namespace when the command's own options failed to parse)
        if args.traceback or any(a in TRACEBACK_FLAGS for a in top.args):
            raise
        print(f"fusekernels {command}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"fusekernels {command}: interrupted", file=sys.stderr)
        return 130
    finally:
        _interrupt.uninstall()
    return 0


if __name__ == "__main__":
    sys.exit(main())
