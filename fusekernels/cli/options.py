"""Command-line options generated from config dataclasses, and config files for every command.

Every command's options are the fields of its config dataclasses (:func:`add_options`): a field
``block_size`` is the flag ``--block-size`` (``--block_size`` is accepted too), its type and
default come from the annotation and the field, and its ``metadata`` may add (the keys
``HfArgumentParser`` reads, plus a few):

- ``help``: the help text; ``choices``: allowed values, a sequence, a
  :class:`~fusekernels.registry.Registry` or a function returning names (both read when the
  command line is parsed, so entries registered later are accepted);
- ``aliases``: more flag names; ``flag``: the flag instead of ``--field-name``; ``metavar``;
- ``type``: the converter of one value (default: from the annotation); ``min``: the smallest
  number allowed (checked when parsing, e.g. 1 for sizes and counts); ``required``: required on
  the command line although the dataclass has a default; ``action="append"``: a repeatable flag
  (``--teacher a --teacher b``) instead of one flag taking several values (``--sources a b``);
- ``negate``: the flag that sets a ``True``-by-default bool to False (default ``--no-field-name``);
  ``negate_help``: its help text (given, it adds that flag to a ``False``-by-default bool too);
- ``parse``: the option takes one or more string tokens and ``parse(tokens)`` makes the field's
  value (e.g. merge settings: a number, a gradient or per-parameter filters).

``help`` (and ``choices``) may also be a function, called when the parser is built.

Bools take an optional value (``--keep-tail``, ``--keep-tail false``); a bool that defaults to
True (or has a ``negate_help``) also gets ``--no-<name>``; a ``bool | str`` field takes true /
false or a string (e.g. ``--cache FOLDER``). ``list[X]`` fields take one or more values.

:func:`parse` reads a command's arguments: an optional YAML / JSON config file first, whose keys
are field names (``block_size`` or ``block-size``), then flags, which override the file::

    fusekernels split run.yaml --out split2/
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path

CONFIG_HELP = ("an optional YAML / JSON file of options first (keys: the option names, e.g. block_size); "
               "flags after it override it")


class Choices:
    """Allowed values read when argparse checks or lists them: a sequence, a registry (its names)
    or a function returning names."""

    def __init__(self, source):
        self.source = source

    def names(self) -> tuple:
        source = self.source
        if callable(source) and not isinstance(source, Mapping):
            source = source()
        return tuple(source)

    def __contains__(self, value) -> bool:
        return value in self.names()

    def __iter__(self):
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


def positive_int(text) -> int:
    """An int >= 1 (argparse type)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def at_least(convert, minimum):
    """argparse type: ``convert(text)``, refused below ``minimum``."""
    def parse(text):
        value = convert(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def str_to_bool(text) -> bool:
    """``true/false``, ``yes/no``, ``1/0`` (any case) -> bool (argparse type)."""
    if isinstance(text, bool):
        return text
    value = str(text).strip().lower()
    if value in ("true", "t", "yes", "y", "1"):
        return True
    if value in ("false", "f", "no", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


class _Append(argparse.Action):
    """``action="append"`` whose first use replaces the default (e.g. a config file's list)
    instead of extending it."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = getattr(namespace, self.dest, None)
        items = [] if items is None or items is self.default else list(items)
        items.append(values)
        setattr(namespace, self.dest, items)


def bool_or_str(text):
    """``true/false`` (any spelling of :func:`str_to_bool`) -> bool, anything else as given
    (argparse type of ``bool | str`` fields such as ``cache``: on, off, or a folder)."""
    try:
        return str_to_bool(text)
    except argparse.ArgumentTypeError:
        return str(text)


def _unwrap(annotation):
    """``(type, origin, args)`` of an annotation, ``X | None`` taken as ``X`` (``bool | str``
    stays a union: see :func:`bool_or_str`)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if set(args) == {bool, str}:
            return bool_or_str, None, ()
        if len(args) != 1:
            raise TypeError(f"only X | None unions can become options, got {annotation}")
        return _unwrap(args[0])
    return annotation, origin, typing.get_args(annotation)


def add_options(parser: argparse.ArgumentParser, cls, *, title: str | None = None, exclude=()) -> None:
    """Add one option per init field of the dataclass ``cls`` (see the module docstring)."""
    hints = typing.get_type_hints(cls)
    target = parser.add_argument_group(title) if title else parser
    for f in dataclasses.fields(cls):
        if not f.init or f.name in exclude or f.metadata.get("cli", True) is False:
            continue
        meta = f.metadata
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        default = (f.default if f.default is not dataclasses.MISSING
                   else f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        dashed = f.name.replace("_", "-")
        names = [meta.get("flag", f"--{dashed}"), *meta.get("aliases", ())]
        text = meta.get("help")
        kwargs = {"dest": f.name, "help": text() if callable(text) else text, "default": default,
                  "required": bool(meta.get("required", not has_default))}
        if meta.get("metavar"):
            kwargs["metavar"] = meta["metavar"]
        if meta.get("parse") is not None:  # string tokens, made into the value by from_namespace
            target.add_argument(*names, nargs="+", **kwargs)
            continue
        annotation, origin, args = _unwrap(hints[f.name])
        choices = meta.get("choices")
        if annotation is bool or annotation is bool_or_str:
            convert, metavar = (str_to_bool, "BOOL") if annotation is bool else (bool_or_str, "BOOL|VALUE")
            target.add_argument(*names, type=meta.get("type", convert), nargs="?", const=True,
                                **{"metavar": metavar, **kwargs})
            if default is True or "negate_help" in meta:  # (a False default keeps its --no-x if it names one)
                target.add_argument(meta.get("negate", f"--no-{dashed}"), dest=f.name, action="store_false",
                                    help=meta.get("negate_help", f"set {names[0]} to false"))
            continue
        if origin is typing.Literal:
            choices, annotation = args, type(args[0])
        elif annotation is list or origin in (list, tuple):
            element = args[0] if args and args[0] is not Ellipsis else str
            kwargs["type"] = meta.get("type", element if element in (int, float) else None)
            if meta.get("action") == "append":
                kwargs["action"] = _Append
            else:
                kwargs["nargs"] = "+"
            annotation = None
        if annotation is not None:
            kwargs["type"] = meta.get("type", annotation if annotation in (int, float) else None)
        if "min" in meta:
            kwargs["type"] = at_least(kwargs.get("type") or int, meta["min"])
        if choices is not None:
            kwargs["choices"] = Choices(choices)
        target.add_argument(*names, **kwargs)


def from_namespace(cls, namespace: argparse.Namespace, **overrides):
    """An instance of the dataclass ``cls`` from the parsed options (``overrides`` win)."""
    values = {}
    for f in dataclasses.fields(cls):
        if f.init and hasattr(namespace, f.name):
            value = getattr(namespace, f.name)
            if f.metadata.get("parse") is not None and isinstance(value, list):
                value = f.metadata["parse"](value)
            values[f.name] = value
    values.update(overrides)
    return cls(**values)


# ---------------------------------------------------------------------- config files
def load_config_file(path: str | Path) -> dict:
    """The option dict of a ``.yaml`` / ``.yml`` / ``.json`` configuration file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        from .._optional import require

        require("yaml", "reading a YAML config file")
        import yaml

        config = yaml.safe_load(text)
    elif path.suffix.lower() == ".json":
        config = json.loads(text)
    else:
        raise ValueError(f"config file {path.name} must end in .yaml, .yml or .json")
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ValueError(f"config file {path} must hold a mapping of option names to values")
    return config


def _actions_by_dest(parser) -> dict:
    """dest -> the action that takes a value for it (not a ``--no-x`` switch)."""
    found = {}
    for action in parser._actions:
        if action.dest in (argparse.SUPPRESS, "help") or not action.option_strings:
            continue
        if isinstance(action, argparse._StoreFalseAction) and action.dest in found:
            continue
        if action.dest not in found or isinstance(found[action.dest], argparse._StoreFalseAction):
            found[action.dest] = action
    return found


def _convert(action, value, where: str):
    """A config-file value as the option's own type would read it from the command line."""
    if value is None or isinstance(value, Mapping):
        return value  # (dict-valued options of TrainingArguments take the mapping itself)
    many = action.nargs in ("+", "*") or isinstance(action, (_Append, argparse._AppendAction))
    if isinstance(action, argparse._StoreFalseAction):
        return str_to_bool(value)
    if isinstance(value, (list, tuple)):
        if not many:
            raise ValueError(f"{where}: expects one value, got a list")
        return [_convert_one(action, v, where) for v in value]
    return [_convert_one(action, value, where)] if many else _convert_one(action, value, where)


def _convert_one(action, value, where):
    if isinstance(value, (dict, list)):
        return value
    try:
        converted = action.type(value if isinstance(value, str) else str(value)) if action.type else (
            value if isinstance(value, str) else str(value))
    except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
        raise ValueError(f"{where}: invalid value {value!r} ({exc})") from None
    if action.choices is not None and converted not in action.choices:
        raise ValueError(f"{where}: invalid choice {converted!r} (choose from {', '.join(map(str, action.choices))})")
    return converted


def apply_config(parser: argparse.ArgumentParser, config: Mapping, *, source: str) -> None:
    """Make the file's values the parser's defaults (checked and converted like flags), so that
    they satisfy required options and flags given afterwards override them."""
    actions = _actions_by_dest(parser)
    values = {}
    unknown = []
    for key, value in config.items():
        dest = str(key).replace("-", "_")
        action = actions.get(dest)
        if action is None:
            unknown.append(str(key))
            continue
        values[dest] = _convert(action, value, f"config file {source}: {key}")
    if unknown:
        raise ValueError(f"unknown option(s) in the config file {source}: {sorted(unknown)} "
                         f"(see {parser.prog} --help)")
    for action in parser._actions:
        if action.dest in values:
            action.required = False
    parser.set_defaults(**values)


def normalize_flags(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``--block_size`` -> ``--block-size`` (and the reverse) where only the other spelling exists."""
    known = parser._option_string_actions
    out = []
    for arg in argv:
        if arg.startswith("--") and len(arg) > 2:
            name, sep, value = arg.partition("=")
            if name not in known:
                for alt in (name[:2] + name[2:].replace("_", "-"), name[:2] + name[2:].replace("-", "_")):
                    if alt in known:
                        arg = alt + sep + value
                        break
        out.append(arg)
    return out


def split_config_file(argv: list[str]) -> tuple[str | None, list[str]]:
    """``(config file or None, the remaining arguments)``: a first argument that is no flag."""
    argv = [str(a) for a in argv]
    if argv and not argv[0].startswith("-"):
        return argv[0], argv[1:]
    return None, argv


def parse(parser: argparse.ArgumentParser, argv: list[str], *, before: Callable | None = None) -> argparse.Namespace:
    """A command's options from ``[CONFIG_FILE] [flags...]`` (flags override the file)."""
    path, argv = split_config_file(argv)
    if path is not None:
        apply_config(parser, load_config_file(path), source=path)
    argv = normalize_flags(parser, argv)
    if before is not None:
        argv = before(argv)
    namespace = parser.parse_args(argv)
    if getattr(namespace, "config", None) is not None:
        parser.error(f"unrecognized argument {namespace.config!r} (a config file comes right after the command)")
    return namespace
