"""``fusekernels train``: FusionTrainer driven by ``HfArgumentParser``, from flags or a config file.

Every option of ``transformers.TrainingArguments`` (with its defaults: checkpoints every 500
steps, ...), of :class:`FusionArguments` and of the two small classes below can be given on the
command line (``--learning_rate 1e-4`` or ``--learning-rate 1e-4``) or in a YAML / JSON file
whose keys are the same names; flags after the file override it::

    fusekernels train run.yaml
    fusekernels train run.yaml --max_steps 100
    fusekernels train --model student/ --data packed/ --output_dir out/ --bf16 true --lam 0.9

``--resume_from_checkpoint latest`` (or a checkpoint folder) continues an interrupted run in its
``output_dir``: the run's options are stored there (``fusekernels_train.json``) and a resume is
refused when an option that shapes the result differs. ``latest`` takes the newest *complete*
checkpoint (one whose save finished: its ``trainer_state.json``, written last, reads back), so a
save interrupted half-way is skipped. Without it, ``output_dir`` must be empty, or hold only the
options file of a run that failed before its first checkpoint (it is rerun from scratch).
Config-file values are checked against each option's type before anything is loaded.
The few flags of earlier versions (``--out``, ``--steps``, ``--batch-size``, ``--grad-accum``,
``--lr``, ``--cpu``) still work.
"""
from __future__ import annotations

import functools
import json
import typing
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from pathlib import Path

RUN_CONFIG = "fusekernels_train.json"
LEGACY_FLAGS = {"--out": "--output_dir", "--steps": "--max_steps", "--batch-size": "--per_device_train_batch_size",
                "--grad-accum": "--gradient_accumulation_steps", "--lr": "--learning_rate", "--cpu": "--use_cpu"}
# TrainingArguments that may change between an interrupted run and its resume (they do not
# change the trained weights): logging, reporting, saving, evaluation and data-loader workers.
RESUMABLE_CHANGES = ("resume_from_checkpoint", "output_dir", "logging_dir", "report_to", "run_name", "disable_tqdm",
                     "dataloader_num_workers", "dataloader_prefetch_factor", "dataloader_persistent_workers",
                     "dataloader_pin_memory", "per_device_eval_batch_size", "push_to_hub", "hub_model_id",
                     "hub_strategy", "hub_token", "hub_private_repo", "log_level", "log_level_replica")
RESUMABLE_PREFIXES = ("logging_", "save_", "eval_", "hub_")


@dataclass
class ModelArguments:
    """The student model (``fusekernels train`` options)."""

    model: str | None = field(default=None, metadata={
        "help": "Base (student) model: folder or .gguf file.", "aliases": ["--model_name_or_path"]})
    tokenizer: str | None = field(default=None, metadata={"help": "Tokenizer (default: the model's)."})
    dtype: str | None = field(default=None, metadata={
        "help": "Weights dtype when loading: float32 | bfloat16 | float16 (default: as saved). Mixed precision "
                "is --bf16 / --fp16.", "choices": ["float32", "bfloat16", "float16"]})


@dataclass
class DataArguments:
    """Training and evaluation data (``fusekernels train`` options)."""

    data: str | None = field(default=None, metadata={
        "help": "Training data with teacher columns: `fusekernels pack` output or any saved dataset.",
        "aliases": ["--train_data"]})
    eval_data: str | None = field(default=None, metadata={
        "help": "Held-out data: texts (a text column, tokenized with the student's tokenizer) or a saved dataset "
                "with input_ids, with or without teacher columns: eval_loss, eval_clm_loss and eval_perplexity are "
                "reported (at the end, or per --eval_strategy)."})
    text_column: str = field(default="text", metadata={"help": "Column of --eval_data holding raw texts."})
    max_length: int = field(default=2048, metadata={"help": "Truncation length of raw --eval_data texts."})


def build_parser():
    from transformers import HfArgumentParser, TrainingArguments

    from .trainer import FusionArguments

    return HfArgumentParser((ModelArguments, DataArguments, FusionArguments, TrainingArguments),
                            prog="fusekernels train",
                            description="Train the base model with the fusion loss (FusionTrainer). Usage: "
                                        "fusekernels train [CONFIG.yaml|CONFIG.json] [--option value ...]")


def load_config_file(path: str | Path) -> dict:
    """The option dict of a ``.yaml`` / ``.yml`` / ``.json`` run configuration."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
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


def parse_train_args(argv: list[str]):
    """``(ModelArguments, DataArguments, FusionArguments, TrainingArguments)`` from the command
    line: an optional config file first, then flags (which override the file)."""
    argv = [str(a) for a in argv]
    parser = build_parser()
    config, argv_file = {}, None
    if argv and not argv[0].startswith("-"):
        argv_file = argv.pop(0)
        config = load_config_file(argv_file)
    translated = []
    for arg in argv:
        name, sep, value = arg.partition("=")
        translated.append(LEGACY_FLAGS.get(name, name) + sep + value)
    if config:
        dests = {action.dest for action in parser._actions}
        unknown = sorted(k for k in config if k not in dests)
        if unknown:
            raise ValueError(f"unknown option(s) in the config file: {unknown} (see fusekernels train --help)")
        for name, value in config.items():
            _check_config_value(name, value, path=argv_file)
        for action in parser._actions:  # values from the file satisfy required options
            if action.dest in config:
                action.required = False
        parser.set_defaults(**config)
    model_args, data_args, fusion_args, training_args = parser.parse_args_into_dataclasses(args=translated)
    if model_args.model is None:
        raise ValueError("--model is required (the base model folder or .gguf file)")
    if data_args.data is None:
        raise ValueError("--data is required (the training data with teacher columns)")
    if training_args.output_dir is None:
        raise ValueError("--output_dir is required")
    return model_args, data_args, fusion_args, training_args


@functools.lru_cache(maxsize=1)
def _option_types() -> dict:
    """Option name -> its type annotation, over the four argument dataclasses."""
    from transformers import TrainingArguments

    from .trainer import FusionArguments

    types = {}
    for cls in (TrainingArguments, FusionArguments, DataArguments, ModelArguments):
        hints = typing.get_type_hints(cls)
        types.update({f.name: hints.get(f.name, typing.Any) for f in fields(cls)})
    return types


def _check_config_value(name: str, value, *, path) -> None:
    """``ValueError`` naming the file and the option when a config-file value does not have the
    option's type (YAML gives ``max_steps: 2.5`` a float and ``learning_rate: [1, 2]`` a list;
    argparse converts only strings, so such values used to fail deep inside training)."""
    hint = _option_types().get(name)
    if hint is None or _fits(value, hint):
        return
    raise ValueError(f"config file {path}: {name} must be {_describe(hint)}, got {value!r}")


def _fits(value, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any:
        return True
    if origin is typing.Union or type(hint).__name__ == "UnionType":
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is typing.Literal:
        return value in args
    if origin in (list, tuple):
        return isinstance(value, (list, tuple)) and all(_fits(v, args[0]) for v in value) if args else \
            isinstance(value, (list, tuple))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if isinstance(hint, type) and issubclass(hint, Enum):
        return value in {e.value for e in hint} or value in hint.__members__ or isinstance(value, hint)
    if hint is bool:
        return isinstance(value, bool) or (isinstance(value, str) and value.lower() in
                                           ("true", "false", "yes", "no", "1", "0", "t", "f", "y", "n"))
    if hint is int:
        return (isinstance(value, int) and not isinstance(value, bool)) or _parses(value, int)
    if hint is float:
        return (isinstance(value, (int, float)) and not isinstance(value, bool)) or _parses(value, float)
    if hint is str:
        return isinstance(value, (str, int, float)) and not isinstance(value, bool)
    return True  # other types (callables, objects): left to the option's own checks


def _parses(value, kind) -> bool:
    if not isinstance(value, str):
        return False
    try:
        kind(value)
    except ValueError:
        return False
    return True


def _describe(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or type(hint).__name__ == "UnionType":
        return " or ".join(_describe(a) for a in args)
    if hint is type(None):
        return "null"
    if origin is typing.Literal or (isinstance(hint, type) and issubclass(hint, Enum)):
        choices = args if origin is typing.Literal else [e.value for e in hint]
        return "one of " + ", ".join(map(str, choices))
    if origin in (list, tuple):
        return f"a list of {_describe(args[0])}" if args else "a list"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a mapping"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _run_config(model_args, data_args, fusion_args, training_args) -> dict:
    return {"model": asdict(model_args), "data": asdict(data_args), "fusion": asdict(fusion_args),
            "training": json.loads(training_args.to_json_string())}


def _shaping_differences(saved: dict, current: dict) -> list[str]:
    """Options that differ between a stored run configuration and the current one, except those a
    resume may change (logging, saving, evaluation, reporting)."""
    diffs = []
    for group in ("model", "data", "fusion", "training"):
        old, new = saved.get(group, {}), current[group]
        for key in sorted(set(old) | set(new)):
            if group == "training" and (key in RESUMABLE_CHANGES or key.startswith(RESUMABLE_PREFIXES)):
                continue
            if group == "data" and key == "eval_data":
                continue
            if old.get(key) != new.get(key):
                diffs.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return diffs


def checkpoint_is_complete(folder: str | Path) -> bool:
    """Whether a ``checkpoint-N`` folder was saved completely: the Trainer writes its
    ``trainer_state.json`` after the weights, optimizer, scheduler and RNG states, so a save
    interrupted before the end (Ctrl-C, a killed job) lacks it or holds a partial file."""
    try:
        state = json.loads((Path(folder) / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(state, dict) and "global_step" in state


def last_complete_checkpoint(output_dir: str | Path, *, log=None) -> str | None:
    """The newest complete ``checkpoint-N`` folder of ``output_dir`` (None if there is none);
    ``log`` gets one line per incomplete one skipped."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    out = Path(output_dir)
    if not out.is_dir():
        return None
    steps = []
    for child in out.iterdir():
        name = child.name
        if child.is_dir() and name.startswith(PREFIX_CHECKPOINT_DIR + "-") and name.split("-")[-1].isdigit():
            steps.append((int(name.split("-")[-1]), child))
    for _, child in sorted(steps, reverse=True):
        if checkpoint_is_complete(child):
            return str(child)
        if log is not None:
            log(f"train: skipping {child}: its save did not finish (no readable trainer_state.json)")
    return None


def resolve_checkpoint(training_args, *, log=None) -> str | None:
    """The checkpoint to resume from (``--resume_from_checkpoint latest|true|PATH``), or None."""
    value = training_args.resume_from_checkpoint
    if value is None or str(value).lower() in ("", "false", "no", "none"):
        return None
    if str(value).lower() in ("latest", "last", "true", "yes"):
        out = Path(training_args.output_dir)
        last = last_complete_checkpoint(out, log=log)
        if last is None:
            raise ValueError(f"--resume_from_checkpoint {value}: no complete checkpoint-* folder in {out}")
        return last
    if not Path(value).is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint: checkpoint folder not found: {value}")
    if not checkpoint_is_complete(value):
        raise ValueError(f"--resume_from_checkpoint: {value} is incomplete (its save was interrupted: no readable "
                         "trainer_state.json); use an earlier checkpoint or 'latest'")
    return str(value)


def run_training(model_args, data_args, fusion_args, training_args, *, callbacks=None, log=print):
    """Train as ``fusekernels train`` does; returns ``(TrainOutput, eval metrics or None)``.

    Checks the output folder (empty, or holding the same run when resuming) before loading
    anything; stores the run configuration next to the checkpoints; saves the final model and
    tokenizer into ``output_dir``.
    """
    from ..pipeline.io import load_model, load_rows, load_tokenizer
    from ..storage import atomic_write_json, check_output_dir, check_writable
    from .trainer import FusionTrainer

    out = Path(training_args.output_dir)
    checkpoint = resolve_checkpoint(training_args, log=log)
    current = _run_config(model_args, data_args, fusion_args, training_args)
    if checkpoint is None:
        # a folder holding only the options file of a run that failed before its first checkpoint
        # is this command's own leftover: the run starts again there
        check_output_dir(out, inputs=[model_args.model, data_args.data, data_args.eval_data], arg="--output_dir",
                         ignore=(RUN_CONFIG,))
    else:
        stored = out / RUN_CONFIG
        if not stored.is_file():
            raise ValueError(f"{out} has no {RUN_CONFIG}: it was not written by fusekernels train, cannot resume")
        diffs = _shaping_differences(json.loads(stored.read_text(encoding="utf-8")), current)
        if diffs:
            raise ValueError("cannot resume: options that shape the result changed since the interrupted run ("
                             + "; ".join(diffs) + ")")
        check_writable(out, arg="--output_dir")
        log(f"train: resuming from {checkpoint}")
    tokenizer = load_tokenizer(model_args.tokenizer or model_args.model)
    train_data = load_rows(data_args.data)
    eval_data = load_rows(data_args.eval_data) if data_args.eval_data else None
    if eval_data is not None and "input_ids" not in eval_data.column_names:
        from ..pipeline.extract import tokenize_texts

        eval_data = tokenize_texts(tokenizer, eval_data, max_length=data_args.max_length,
                                   text_column=data_args.text_column)
    kwargs = {}
    if model_args.dtype:
        import torch

        kwargs["dtype"] = getattr(torch, model_args.dtype)
    model = load_model(model_args.model, **kwargs)
    if checkpoint is None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / RUN_CONFIG, current)
    trainer = FusionTrainer(model=model, args=training_args, train_dataset=train_data, eval_dataset=eval_data,
                            processing_class=tokenizer, fusion_args=fusion_args, callbacks=callbacks)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(str(out))
    metrics = None
    if eval_data is not None:
        metrics = trainer.evaluate()
    return trainer, result, metrics


def main(argv: list[str]) -> None:
    """Entry point of ``fusekernels train`` (arguments after the command name)."""
    parsed = parse_train_args(argv)
    _, result, metrics = run_training(*parsed)
    out = parsed[3].output_dir
    line = f"train: {result.global_step} steps, mean training loss {result.training_loss:.4f}"
    if metrics:
        line += (f"; eval loss {metrics.get('eval_loss', float('nan')):.4f}, "
                 f"eval perplexity {metrics.get('eval_perplexity', float('nan')):.3f}")
    print(f"{line}; model saved to {out}")
