"""TIES, DARE, SLERP and task-arithmetic merges of FuseChat target models, run by mergekit.

FuseChat publishes mergekit configurations next to its own VaRM merge: the
pivot (common starting model) is ``base_model`` and every target model has a ``weight`` and, for
TIES / DARE, a ``density`` (FuseChat: 0.5), with ``normalize: true``; SLERP interpolates two
target models with ``t``. :func:`mergekit_config` writes that configuration for local model
folders and :func:`merge_with_mergekit` runs it with the same output safety as the streamed
VaRM / linear merge: the output must be absent or an empty folder that is not, does not contain
and does not lie inside an input, and it appears only once complete (temporary folder +
rename). mergekit is an optional dependency (``pip install fusekernels[merge]``).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

from .io import MODEL_DTYPES

MERGEKIT_METHODS = ("ties", "dare_ties", "dare_linear", "slerp", "task_arithmetic")
_USES_DENSITY = ("ties", "dare_ties", "dare_linear")


def _per_model(name, value, n, default):
    if value is None:
        return [default] * n
    if isinstance(value, (int, float)):
        return [float(value)] * n
    values = [float(v) for v in value]
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries for {n} targets (give one, or one per target)")
    return values


def mergekit_config(targets: Sequence[str | os.PathLike], method: str, *, base=None, weights=None,
                    density=None, t=0.5, normalize: bool = True, dtype: str | None = None) -> dict:
    """The mergekit configuration (a dict, as the YAML file would hold) of a FuseChat merge.

    Args:
        targets: model folders (Hugging Face format) of the target models, same architecture.
        method: one of ``MERGEKIT_METHODS``.
        base: the pivot / common starting model folder (all methods but "slerp").
        weights: per-target weights (one value or one per target; default 1 each, normalised
            when ``normalize``); not used by "slerp".
        density: fraction of each task vector kept by TIES / DARE (one value or one per target;
            default 0.5 as in FuseChat).
        t: SLERP interpolation (0 = first target, 1 = second): a number or a list (a gradient
            over the layers, as mergekit reads it).
        dtype: "float32" | "bfloat16" | "float16" output dtype; None = mergekit's default.
    """
    if method not in MERGEKIT_METHODS:
        raise ValueError(f"method must be one of {MERGEKIT_METHODS}, got {method!r}")
    targets = [str(Path(p)) for p in targets]
    if method == "slerp":
        if len(targets) != 2:
            raise ValueError(f"method='slerp' interpolates exactly two targets, got {len(targets)}")
        if weights is not None or density is not None:
            raise ValueError("method='slerp' takes t=, not weights= or density=")
        ts = [float(x) for x in t] if isinstance(t, (list, tuple)) else float(t)
        if any(not 0.0 <= x <= 1.0 for x in (ts if isinstance(ts, list) else [ts])):
            raise ValueError(f"t must lie in [0, 1], got {t!r}")
        config = {"models": [{"model": targets[0]}, {"model": targets[1]}], "merge_method": "slerp",
                  "base_model": targets[0], "parameters": {"t": ts}}
    else:
        if base is None:
            raise ValueError(f"method={method!r} needs base= (the pivot model the targets were trained from)")
        if not targets:
            raise ValueError("targets must list at least one model folder")
        w = _per_model("weights", weights, len(targets), 1.0)
        models = [{"model": str(Path(base))}]
        if method in _USES_DENSITY:
            d = _per_model("density", density, len(targets), 0.5)
            if any(not 0.0 < x <= 1.0 for x in d):
                raise ValueError(f"density must lie in (0, 1], got {d}")
            models += [{"model": p, "parameters": {"weight": wi, "density": di}} for p, wi, di in zip(targets, w, d)]
        else:
            if density is not None:
                raise ValueError("density= is only used by ties / dare_ties / dare_linear")
            models += [{"model": p, "parameters": {"weight": wi}} for p, wi in zip(targets, w)]
        config = {"models": models, "merge_method": method, "base_model": str(Path(base)),
                  "parameters": {"normalize": bool(normalize)}}
    if dtype is not None:
        if dtype not in MODEL_DTYPES:
            raise ValueError(f"dtype must be one of {MODEL_DTYPES}, got {dtype!r}")
        config["dtype"] = dtype
    return config


def _check_model_folder(path, what):
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    if not (path.is_dir() and (path / "config.json").is_file()):
        raise ValueError(f"{what} {path} must be a model folder with a config.json (mergekit merges "
                         "Hugging Face model folders)")


def merge_with_mergekit(targets: Sequence[str | os.PathLike], output: str | os.PathLike, *, method: str,
                        base=None, weights=None, density=None, t=0.5, normalize: bool = True,
                        dtype: str | None = None, seed: int = 0, max_shard_size: int = 2 * 1024**3,
                        copy_tokenizer: bool = True):
    """Run a TIES / DARE / SLERP / task-arithmetic merge with mergekit into the folder ``output``.

    Arguments as in :func:`mergekit_config`; ``seed`` seeds DARE's random drops (the same seed
    gives the same merge). Returns a :class:`fusekernels.pipeline.merge.MergeReport`.
    """
    from ..storage import atomic_dir
    from .merge import MergeReport, SafetensorsCheckpoint, check_merge_output

    if str(output).endswith(".safetensors"):
        raise ValueError(f"method={method!r} writes a model folder: output must not end in .safetensors")
    config = mergekit_config(targets, method, base=base, weights=weights, density=density, t=t,
                             normalize=normalize, dtype=dtype)
    for path in targets:
        _check_model_folder(path, "target")
    if base is not None and method != "slerp":
        _check_model_folder(base, "base")
    check_merge_output(output, [*targets, base])
    try:
        from mergekit.config import MergeConfiguration
        from mergekit.merge import run_merge
        from mergekit.options import MergeOptions
    except ImportError as err:
        raise ImportError(f"method={method!r} needs mergekit: pip install 'fusekernels[merge]' ({err})") from None

    merge_config = MergeConfiguration.model_validate(config)
    options = MergeOptions(copy_tokenizer=copy_tokenizer, random_seed=int(seed), out_shard_size=int(max_shard_size),
                           quiet=True, lazy_unpickle=True, write_model_card=False)
    final = Path(output)
    with atomic_dir(final) as tmp:
        run_merge(merge_config, str(tmp), options=options)
    report = MergeReport(method=method)
    report.files = sorted(str(final / p.name) for p in final.glob("*.safetensors"))
    if method == "slerp":
        configured = [1.0 - t, float(t)] if isinstance(t, (int, float)) else []
    else:
        configured = [m["parameters"]["weight"] for m in config["models"][1:]]
    with SafetensorsCheckpoint(final) as merged:
        for key in merged.keys():
            report.num_parameters += math.prod(merged.shape(key))
            report.weights[key] = list(configured)
    return report
