"""``fusekernels merge``: trained target models merged in parameter space."""
from __future__ import annotations

from dataclasses import dataclass, field

from .common import command_parser, parse_size
from .options import add_options, from_namespace

HELP = ("Merge target models in parameter space (FuseChat VaRM, linear; TIES, DARE, SLERP, task arithmetic via "
        "mergekit).")


def merge_methods():
    from ..pipeline.merge import merge_methods

    return merge_methods()


def _model_dtypes():
    from ..pipeline.io import MODEL_DTYPES

    return MODEL_DTYPES


@dataclass(kw_only=True)
class MergeArguments:
    targets: list[str] = field(metadata={
        "help": "safetensors checkpoints (folders, files or Hub model ids; model folders for the mergekit methods)"})
    base: str | None = field(default=None, metadata={
        "help": "common starting (pivot) model: varm, ties, dare_*, task_arithmetic"})
    method: str = field(default="varm", metadata={"choices": merge_methods, "help": "merge method"})
    weights: list[float] | None = field(default=None, metadata={
        "help": "per-target weights (linear; ties / dare_* / task_arithmetic, default 1 each)"})
    temperature: float | None = field(default=None, metadata={
        "help": "VaRM softmax temperature (default: plain normalisation)"})
    density: list[float] | None = field(default=None, metadata={
        "help": "ties / dare_*: fraction of each task vector kept (one value or one per target; default 0.5 as "
                "FuseChat)"})
    t: list[float] = field(default_factory=lambda: [0.5], metadata={
        "help": "slerp: 0 = first target, 1 = second (several values: a gradient over the layers)"})
    normalize: bool = field(default=True, metadata={
        "help": "ties / dare_* / task_arithmetic: normalise the weights (FuseChat normalises)",
        "negate_help": "ties / dare_* / task_arithmetic: do not normalise the weights (FuseChat normalises)"})
    merge_dtype: str | None = field(default=None, metadata={"choices": _model_dtypes,
                                                             "help": "mergekit methods: output dtype "
                                                                     "(default: mergekit's)"})
    seed: int = field(default=0, metadata={"help": "seed of DARE's random drops"})
    max_shard_size: str = field(default="2GB", metadata={"help": "bytes per output shard, e.g. 500MB or 2GB"})
    out: str = field(metadata={"help": "output folder or .safetensors file"})


def _local(spec: str) -> str:
    """A Hub model id as its local snapshot folder; paths as given (merge_models checks them)."""
    from ..pipeline.io import hub_model_id, resolve_model

    return str(resolve_model(spec)) if hub_model_id(spec) else spec


def build_parser():
    parser = command_parser("merge", HELP)
    add_options(parser, MergeArguments)
    return parser


def run(args) -> None:
    from ..pipeline.merge import merge_models

    a = from_namespace(MergeArguments, args)
    targets = [_local(t) for t in a.targets]
    base = _local(a.base) if a.base is not None else None
    report = merge_models(targets, a.out, method=a.method, base=base, weights=a.weights,
                          temperature=a.temperature, max_shard_size=parse_size(a.max_shard_size), density=a.density,
                          t=a.t if len(a.t) > 1 else a.t[0], seed=a.seed, normalize=a.normalize, dtype=a.merge_dtype)
    print(f"merge ({report.method}): {len(report.weights)} tensors, {report.num_parameters} parameters -> "
          f"{', '.join(report.files)}")
