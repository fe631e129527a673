"""What the command modules share: the user-error type, output checks, the parser skeleton."""
from __future__ import annotations

import argparse
from pathlib import Path

EXIT_USER_ERROR = 2


class UserError(Exception):
    """An error caused by the command line or the input files (no traceback shown)."""


def user_errors() -> tuple:
    """The exception types reported as one line with exit status 2."""
    # OSError: unreadable inputs, read-only outputs, a full disk (each reported with its path)
    errors = [UserError, OSError, ValueError, ImportError]
    try:
        from fusekernels.tokenization.assets import AssetUnavailable

        errors.append(AssetUnavailable)
    except ImportError:
        pass
    try:  # weights files that cannot be read or written (damaged input, full disk)
        from safetensors import SafetensorError

        errors.append(SafetensorError)
    except ImportError:
        pass
    return tuple(errors)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows the default of every option that has a meaningful one, with or without help text."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.required or action.default is None or action.default is False
                or action.default == argparse.SUPPRESS
                or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
                or "%(default)" in text):
            return text
        return f"{text} (default: %(default)s)".strip()

    def _format_usage(self, usage, actions, groups, prefix):
        # the config file comes first: "fusekernels pack [CONFIG] --data DATA ..."
        config = [a for a in actions if a.dest == "config"]
        text = super()._format_usage(usage, [a for a in actions if a.dest != "config"], groups, prefix)
        if config and usage is None:
            text = text.replace(self._prog, f"{self._prog} [CONFIG]", 1)
        return text


def add_global_options(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """``--traceback`` (alias ``--debug``), ``--verbose`` and ``--quiet``: accepted before the
    command and after it (there with suppressed defaults, so they never undo the first)."""
    default = {} if top else {"default": argparse.SUPPRESS}
    group = parser.add_argument_group("general options")
    group.add_argument("--traceback", "--debug", dest="traceback", action="store_true",
                       help="show full tracebacks instead of one-line errors",
                       **({"default": False} if top else default))
    group.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const="debug",
                       help="log every decision (debug level)", **({"default": "info"} if top else default))
    group.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const="warning",
                       help="log warnings and errors only", **({"default": "info"} if top else default))


def command_parser(name: str, description: str, **kwargs) -> argparse.ArgumentParser:
    """The parser of ``fusekernels <name>``: an optional config file, then the options."""
    parser = argparse.ArgumentParser(prog=f"fusekernels {name}", description=description,
                                     formatter_class=HelpFormatter, **kwargs)
    parser.add_argument("config", nargs="?", metavar="CONFIG", help=_config_help())
    add_global_options(parser)
    return parser


def _config_help() -> str:
    from .options import CONFIG_HELP

    return CONFIG_HELP


# ---------------------------------------------------------------------- helpers of the commands
def existing(*paths) -> list:
    """The given paths that exist (tokenizer arguments may be packaged names, not paths)."""
    return [p for p in paths if p is not None and Path(p).exists()]


def check_out(out, *inputs, resume_marker=None) -> None:
    """Refuse a non-empty, overlapping or unwritable --out before any work (see storage)."""
    from ..storage import check_output_dir

    check_output_dir(out, inputs=existing(*inputs), resume_marker=resume_marker)


def save_dataset(dataset, out) -> None:
    """Save a dataset so that --out appears only once completely written, with content checksums."""
    from .._interrupt import check_interrupted
    from ..storage import atomic_dir, check_output_dir, write_checksums

    check_output_dir(out)  # (checked before the work too; something may have appeared since)
    with atomic_dir(out) as tmp:
        dataset.save_to_disk(str(tmp))
        write_checksums(tmp)  # verified when a later step reads it back (load_rows)
        check_interrupted()  # a Ctrl-C swallowed during the write: no output appears


def parse_size(text: str, arg: str = "--max-shard-size") -> int:
    """``"500MB"``, ``"2GB"``, ``"1024"`` -> bytes."""
    units = {"": 1, "B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}
    value = str(text).strip().upper()
    number = value.rstrip("KMGB")
    unit = value[len(number):]
    try:
        size = int(float(number) * units[unit])
    except (KeyError, ValueError):
        raise UserError(f"{arg} must look like 500MB or 2GB, got {text!r}") from None
    if size <= 0:
        raise UserError(f"{arg} must be positive, got {text!r}")
    return size


def torch_dtype(name: str):
    import torch

    return getattr(torch, name)
