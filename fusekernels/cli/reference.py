"""The command reference page (``docs/commands.md``), generated from the commands' parsers.

``python -m fusekernels.cli.reference > docs/commands.md`` rewrites it; a test checks that the
committed page equals :func:`markdown`. ``train`` lists fusekernels' own options and points to
``transformers.TrainingArguments`` for the rest (they follow the installed transformers).
"""
from __future__ import annotations

import argparse

from . import COMMANDS, command_module

_GENERAL = {"help", "traceback", "verbosity", "config"}


def _flags(action) -> str:
    return ", ".join(f"`{s}`" for s in action.option_strings)


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _rows(parser, skip=()) -> list[str]:
    rows = []
    negations = {a.dest: a for a in parser._actions if isinstance(a, argparse._StoreFalseAction)}
    for action in parser._actions:
        if action.dest in _GENERAL or action.dest in skip or not action.option_strings:
            continue
        if isinstance(action, argparse._StoreFalseAction):
            continue  # listed with its option
        flags = _flags(action)
        if action.dest in negations:
            flags += f" / {_flags(negations[action.dest])}"
        default = "required" if action.required else (
            "" if action.default in (None, argparse.SUPPRESS) else f"`{action.default}`")
        text = (action.help or "").strip()
        if text and not text.endswith("."):
            text += "."
        if action.choices is not None:
            text += f" Choices: {', '.join(f'`{c}`' for c in action.choices)}."
        rows.append(f"| {flags} | {default} | {_cell(text.strip())} |")
    return rows


def markdown() -> str:
    """The page: every command, its help line and its options (flag, default, help, choices)."""
    lines = ["# Commands", "",
             "Generated from the parsers (`python -m fusekernels.cli.reference > docs/commands.md`). Every command",
             "takes a YAML / JSON config file right after its name (keys: the option names, e.g. `block_size`);",
             "flags after the file override it. Options are spelled with dashes or underscores. General options,",
             "accepted before or after the command: `--traceback` or `--debug` (full tracebacks instead of one-line",
             "errors; `TrainingArguments.debug` is `--hf-debug` in `train`), `-v` / `--verbose`, `-q` / `--quiet`.",
             "User errors print one line on stderr and exit with status 2.", ""]
    for name in COMMANDS:
        module = command_module(name)
        lines += [f"## `fusekernels {name}`", "", module.HELP, ""]
        skip = ()
        if name == "train":
            from transformers import TrainingArguments

            skip = {f for f in TrainingArguments.__dataclass_fields__}
            lines += ["Also every option of `transformers.TrainingArguments` (`--output_dir`, `--max_steps`, "
                      "`--learning_rate`, `--bf16`, ...), with its defaults.", ""]
        lines += ["| option | default | |", "|---|---|---|", *_rows(module.build_parser(), skip), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(), end="")
