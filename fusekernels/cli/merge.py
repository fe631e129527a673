"""``fusekernels merge``: trained target models merged in parameter space (methods: the merge registry)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .common import UserError, command_parser, parse_size
from .options import add_options, from_namespace

HELP = ("Merge target models in parameter space (FuseChat VaRM, linear; TIES, DARE, SLERP, task arithmetic via "
        "mergekit).")


def _method_names():
    from ..pipeline.merge import merge_method_names

    return merge_method_names()


def _method_help():
    from ..pipeline.merge import merge_methods

    return "; ".join(f"{m.name}: {m.summary}" for m in merge_methods())


def _zero_variation_rules():
    from ..pipeline.merge import ZERO_VARIATION_RULES

    return ZERO_VARIATION_RULES


def _model_dtypes():
    from ..pipeline.io import MODEL_DTYPES

    return MODEL_DTYPES


def _settings(tokens):
    """Per-target values: numbers, gradients (0,0.5,1) or filters ('self_attn=0.3;mlp=0.7;0.5')."""
    from ..pipeline.mergekit_merge import parse_setting

    return [parse_setting(v) for v in tokens]


def _t_setting(tokens):
    from ..pipeline.mergekit_merge import parse_cli_setting

    return parse_cli_setting(tokens)


@dataclass(kw_only=True)
class MergeArguments:
    targets: list[str] = field(metadata={
        "help": "safetensors checkpoints (folders, files or Hub model ids; model folders for the mergekit methods)"})
    base: str | None = field(default=None, metadata={
        "help": "common starting (pivot) model: varm, ties, dare_*, task_arithmetic"})
    method: str = field(default="varm", metadata={"choices": _method_names, "help": _method_help})
    weights: list | None = field(default=None, metadata={
        "parse": _settings, "metavar": "W",
        "help": "per-target weights, one for all or one per target (linear: numbers; ties / dare_* / "
                "task_arithmetic: each also a gradient 0,0.5,1 or filters 'self_attn=0.3;mlp=0.7;0.5'; default 1 "
                "each)"})
    temperature: float | None = field(default=None, metadata={
        "help": "VaRM softmax temperature (default: plain normalisation)"})
    zero_variation: str | None = field(default=None, metadata={
        "choices": _zero_variation_rules,
        "help": "VaRM, when a target left a tensor unchanged: uniform weights for it (default, the published "
                "FuseChat merge) or the plain variation ratio (that target gets weight 0)"})
    density: list | None = field(default=None, metadata={
        "parse": _settings, "metavar": "D",
        "help": "ties / dare_*: fraction of each task vector kept (one value or one per target, numbers, gradients "
                "or filters as --weights; default 0.5 as FuseChat)"})
    t: list | None = field(default=None, metadata={
        "parse": _t_setting, "metavar": "T",
        "help": "slerp: 0 = first target, 1 = second; a number, a gradient over the layers (0,0.5,1), or "
                "per-parameter filters with a fallback, e.g. FuseChat's published --t self_attn=0,0.5,0.3,0.7,1 "
                "mlp=1,0.5,0.7,0.3,0 0.5 (default 0.5)"})
    normalize: bool = field(default=True, metadata={
        "help": "ties / dare_* / task_arithmetic: normalise the weights (FuseChat normalises)",
        "negate_help": "ties / dare_* / task_arithmetic: do not normalise the weights (FuseChat normalises)"})
    merge_dtype: str | None = field(default=None, metadata={"choices": _model_dtypes,
                                                             "help": "mergekit methods: output dtype "
                                                                     "(default: mergekit's)"})
    seed: int | None = field(default=None, metadata={"help": "dare_*: seed of the random drops (default 0)"})
    max_shard_size: str = field(default="2GB", metadata={"help": "bytes per output shard, e.g. 500MB or 2GB"})
    out: str = field(metadata={"help": "output folder or .safetensors file"})


def check_one_architecture(folders) -> None:
    """mergekit merges models of one architecture only (its --allow-crimes is not exposed): refuse
    a mix before any work, naming the architectures."""
    found = {}
    for folder in folders:
        config = Path(folder) / "config.json"
        try:
            arch = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
        except (OSError, ValueError, AttributeError):
            continue  # merge_models reports missing or unreadable model folders itself
        found[str(folder)] = "/".join(arch) or "unknown"
    if len(set(found.values())) > 1:
        listed = ", ".join(f"{folder} ({arch})" for folder, arch in found.items())
        raise UserError(f"the models to merge have different architectures: {listed}; the whole-model (mergekit) "
                        "methods merge models of one architecture only")


def _local(spec: str) -> str:
    """A bundled model name or a Hub model id as its local file / folder; paths as given
    (merge_models checks them)."""
    from ..pipeline.io import model_kind, resolve_model

    return str(resolve_model(spec)) if model_kind(spec) != "path" else spec


def build_parser():
    parser = command_parser("merge", HELP)
    add_options(parser, MergeArguments)
    return parser


def run(args) -> None:
    from ..pipeline.merge import merge_models
    from ..pipeline.merge_registry import get_merge_method

    a = from_namespace(MergeArguments, args)
    targets = [_local(t) for t in a.targets]
    base = _local(a.base) if a.base is not None else None
    if get_merge_method(a.method).whole_model:  # mergekit's methods
        check_one_architecture([*targets, *([base] if base else [])])
    report = merge_models(targets, a.out, method=a.method, base=base, weights=a.weights, temperature=a.temperature,
                          zero_variation=a.zero_variation, max_shard_size=parse_size(a.max_shard_size),
                          density=a.density, t=a.t, seed=a.seed, normalize=None if a.normalize else False,
                          dtype=a.merge_dtype)
    print(f"merge ({report.method}): {len(report.weights)} tensors, {report.num_parameters} parameters -> "
          f"{', '.join(report.files)}")
