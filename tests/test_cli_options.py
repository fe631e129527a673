"""The command line's one option mechanism: every config field of every command is a flag, every
command takes a YAML / JSON config file that flags override, general options work anywhere."""
import dataclasses
import json
import logging
import typing

import pytest

from fusekernels.cli import COMMANDS, command_module, main, parse_args


def _configs(command):
    """The config dataclasses whose fields are the command's options."""
    from fusekernels.cli import align, assets, demo, extract, merge, pack, prepare, split, vocab_map
    from fusekernels.recipes.demo import DemoConfig
    from fusekernels.recipes.fusechat import PairwiseConfig
    from fusekernels.recipes.reproduce import ReproduceConfig

    return {"split": [split.SplitArguments], "extract": [extract.ExtractArguments],
            "vocab-map": [vocab_map.VocabMapArguments], "align": [align.AlignArguments], "pack": [pack.PackArguments],
            "prepare": [prepare.PrepareArguments], "merge": [merge.MergeArguments], "fusechat": [PairwiseConfig],
            "demo": [DemoConfig, demo.DemoOutput], "reproduce": [ReproduceConfig],
            "assets": [assets.AssetsArguments]}[command]


LIBRARY_COMMANDS = [c for c in COMMANDS if c != "train"]


def _scalar(annotation):
    """``X`` of ``X`` or ``X | None``."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if len(args) == 1 and typing.get_origin(annotation) is not list else annotation


def _value(annotation, name):
    """A valid value of a field for a config file."""
    base = _scalar(annotation)
    if typing.get_origin(base) is list or base is list:
        element = (typing.get_args(base) or (str,))[0]
        return [3, 4] if element in (int, float) else [f"{name}-a", f"{name}-b"]
    return 3 if base in (int, float) else f"{name}-value"


@pytest.mark.parametrize("command", LIBRARY_COMMANDS)
def test_every_config_field_is_a_flag(command):
    parser = command_module(command).build_parser()
    dests = {action.dest for action in parser._actions}
    for config in _configs(command):
        for f in dataclasses.fields(config):
            if f.init:
                assert f.name in dests, f"{command}: field {f.name} of {config.__name__} has no option"


def test_train_options_cover_its_dataclasses():
    pytest.importorskip("transformers")
    from transformers import TrainingArguments

    from fusekernels.integration import FusionArguments
    from fusekernels.integration.train_command import DataArguments, ModelArguments

    dests = {action.dest for action in command_module("train").build_parser()._actions}
    for config in (ModelArguments, DataArguments, FusionArguments, TrainingArguments):
        missing = [f.name for f in dataclasses.fields(config) if f.init and f.name not in dests]
        assert not missing, f"{config.__name__}: {missing}"


@pytest.mark.parametrize("command", LIBRARY_COMMANDS)
def test_every_command_takes_a_config_file_that_flags_override(command, tmp_path):
    """Required options and one optional string / number option come from the file (JSON and
    YAML); a flag after the file overrides it."""
    config, override = {}, None
    for cls in _configs(command):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            meta = f.metadata
            required = meta.get("required") or (f.default is dataclasses.MISSING
                                                and f.default_factory is dataclasses.MISSING)
            if required:
                config[f.name] = _value(hints[f.name], f.name)
            elif override is None and _scalar(hints[f.name]) in (int, str) and "choices" not in meta:
                override = f
    assert override is not None
    hints = {**{k: v for cls in _configs(command) for k, v in typing.get_type_hints(cls).items()}}
    number = _scalar(hints[override.name]) is int
    config[override.name] = 7 if number else "from-file"
    flag_value = "9" if number else "from-flag"
    for suffix in (".json", ".yaml"):
        path = tmp_path / f"run{suffix}"
        if suffix == ".json":
            path.write_text(json.dumps(config))
        else:
            yaml = pytest.importorskip("yaml")
            path.write_text(yaml.safe_dump({k.replace("_", "-"): v for k, v in config.items()}))  # dashes work too
        _, args = parse_args([command, str(path)])
        for key, value in config.items():
            assert getattr(args, key) == value, key
        flag = override.metadata.get("flag", "--" + override.name.replace("_", "-"))
        _, args = parse_args([command, str(path), flag, flag_value])
        assert str(getattr(args, override.name)) == flag_value


def test_repeatable_options_from_a_file_are_replaced_by_flags(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"base": "b", "base_tokenizer": "t", "out": "o",
                                                 "teacher": ["t1", "t2"], "teacher_tokenizer": ["k1", "k2"],
                                                 "base_teacher": True}))
    _, args = parse_args(["align", str(tmp_path / "a.json")])
    assert args.teacher == ["t1", "t2"] and args.base_teacher is True
    _, args = parse_args(["align", str(tmp_path / "a.json"), "--teacher", "x", "--no-base-teacher"])
    assert args.teacher == ["x"] and args.teacher_tokenizer == ["k1", "k2"] and args.base_teacher is False
    _, args = parse_args(["align", "--base", "b", "--base_tokenizer", "t", "--out", "o", "--base-teacher", "false"])
    assert args.base_tokenizer == "t" and args.base_teacher is False  # underscore spelling, explicit bool


@pytest.mark.parametrize("content, message", [
    ({"data": "d", "block_size": 8, "out": "o", "no_such_option": 1}, "unknown option(s) in the config file"),
    ({"data": "d", "block_size": "eight", "out": "o"}, "block_size: invalid value 'eight'"),
    ({"data": "d", "block_size": 0, "out": "o"}, "must be >= 1, got 0"),
    ({"data": "d", "block_size": 8, "out": "o", "metric_level": "word"}, "invalid choice 'word'"),
    ({"data": "d", "block_size": [8, 9], "out": "o"}, "expects one value"),
    (["not", "a", "mapping"], "must hold a mapping"),
])
def test_bad_config_files_are_one_line_errors(tmp_path, capsys, content, message):
    (tmp_path / "pack.json").write_text(json.dumps(content))
    assert main(["pack", str(tmp_path / "pack.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fusekernels pack: error:") and message in err and "\n" not in err, err


def test_missing_config_file_and_stray_arguments(tmp_path, capsys):
    assert main(["pack", str(tmp_path / "none.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # a second positional is no config file
        parse_args(["pack", "--data", "d", "--block-size", "8", "--out", "o", "stray"])
    assert exc.value.code == 2


@pytest.mark.parametrize("where", ["before", "after"])
def test_traceback_and_debug_anywhere(tmp_path, where):
    argv = ["pack", "--data", str(tmp_path / "missing"), "--block-size", "8", "--out", str(tmp_path / "o")]
    for flag in ("--traceback", "--debug"):
        line = [flag] + argv if where == "before" else argv + [flag]
        with pytest.raises(FileNotFoundError):
            main(line)
    assert main(argv) == 2


@pytest.mark.parametrize("command", list(COMMANDS))
def test_debug_after_every_command_shows_the_traceback(command, tmp_path):
    """``fusekernels <command> ... --debug``: the full traceback instead of the one-line error, for a
    failure of the command's own options (a missing config file) as for every other user error."""
    if command == "train":
        pytest.importorskip("transformers")
    action = command_module(command).build_parser()._option_string_actions["--debug"]
    assert action.dest == "traceback"
    missing = str(tmp_path / "missing.yaml")
    assert main([command, missing]) == 2
    for flag in ("--debug", "--traceback"):
        with pytest.raises(FileNotFoundError):
            main([command, missing, flag])


def test_train_debug_shows_tracebacks_and_hf_debug_is_training_arguments(tmp_path, capsys):
    pytest.importorskip("transformers")
    base = ["--model", str(tmp_path / "no-model"), "--data", str(tmp_path / "d"), "--output_dir", str(tmp_path / "o")]
    _, args = parse_args(["train"] + base + ["--debug"])
    assert args.traceback is True and not args.debug
    assert main(["train"] + base) == 2 and "no-model" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no-model"):
        main(["train"] + base + ["--debug"])
    for flag in ("--hf-debug", "--hf_debug"):
        _, args = parse_args(["train"] + base + [flag, "underflow_overflow"])
        assert [str(getattr(d, "value", d)) for d in args.debug] == ["underflow_overflow"]  # TrainingArguments.debug
        assert args.traceback is False
    (tmp_path / "run.yaml").write_text("debug: underflow_overflow\n")  # a config file keeps the field's name
    _, args = parse_args(["train", str(tmp_path / "run.yaml")] + base)
    assert [str(getattr(d, "value", d)) for d in args.debug] == ["underflow_overflow"] and args.traceback is False
    _, args = parse_args(["--debug", "train"] + base)
    assert args.traceback is True and not args.debug
    _, args = parse_args(["train"] + base + ["--traceback", "-q"])
    assert args.traceback is True and args.verbosity == "warning"


def test_verbosity_sets_the_fusekernels_logger(tmp_path, monkeypatch):
    levels = []
    pack = command_module("pack")
    monkeypatch.setattr(pack, "run", lambda args: levels.append(logging.getLogger("fusekernels").level))
    argv = ["pack", "--data", "d", "--block-size", "8", "--out", "o"]
    assert main(["-q"] + argv) == 0 and main(argv + ["--verbose"]) == 0 and main(argv) == 0
    assert levels == [logging.WARNING, logging.DEBUG, logging.INFO]
    assert logging.getLogger("fusekernels").level == logging.NOTSET  # restored after the command
    assert not logging.getLogger("fusekernels").handlers
    assert parse_args(["-v"] + argv + ["-q"])[1].verbosity == "warning"  # the last one wins


def test_help_lists_every_command_and_live_choices(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert f"  {name} " in out
    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    out = capsys.readouterr().out
    assert "{byte_span,compat_hard,compat_soft}" in out and "--no-cache" in out


def test_command_reference_page_is_current():
    """docs/commands.md is generated from the parsers: regenerate it after changing an option
    (python -m fusekernels.cli.reference > docs/commands.md)."""
    pytest.importorskip("transformers")
    from pathlib import Path

    from fusekernels.cli.reference import markdown

    page = Path(__file__).resolve().parents[1] / "docs" / "commands.md"
    assert page.read_text(encoding="utf-8") == markdown()
    for name in COMMANDS:
        assert f"## `fusekernels {name}`" in page.read_text(encoding="utf-8")


def test_decisions_are_logged_on_stderr_unless_quiet(tmp_path, capsys):
    pytest.importorskip("datasets")
    from tests.pipeline.helpers import make_char_tokenizer, make_tiny_llama

    tok = make_char_tokenizer()
    make_tiny_llama(len(tok), seed=1, max_positions=64).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    (tmp_path / "docs.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in ("In the beginning.", "Amen.")))
    argv = ["extract", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "docs.jsonl"), "--k", "2",
            "--max-length", "16", "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 0  # a rerun resumes (every shard done) and logs it
    captured = capsys.readouterr()
    assert "resuming: 1 of 1 shards done" in captured.err and captured.out.startswith("extract: 2 sequences")
    assert main(argv + ["-q"]) == 0
    captured = capsys.readouterr()
    assert "resuming" not in captured.err and captured.out.startswith("extract: 2 sequences")


def test_bool_or_folder_options(tmp_path):
    """``cache: bool | str`` (reproduce): on, off, or a folder, from flags and from a file."""
    base = ["reproduce", "--out", "o"]
    assert parse_args(base)[1].cache is True
    assert parse_args(base + ["--no-cache"])[1].cache is False
    assert parse_args(base + ["--cache", "false"])[1].cache is False
    assert parse_args(base + ["--cache", str(tmp_path)])[1].cache == str(tmp_path)
    (tmp_path / "r.json").write_text(json.dumps({"out": "o", "cache": str(tmp_path / "c")}))
    assert parse_args(["reproduce", str(tmp_path / "r.json")])[1].cache == str(tmp_path / "c")
