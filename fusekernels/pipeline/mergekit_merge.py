"""TIES, DARE, SLERP and task-arithmetic merges of FuseChat target models, run by mergekit.

FuseChat publishes mergekit configurations next to its own VaRM merge: the pivot (common
starting model) is ``base_model`` and every target model has a ``weight`` and, for TIES / DARE,
a ``density`` (FuseChat: 0.5), with ``normalize: true``; SLERP interpolates two target models
with ``t``, FuseChat's published SLERP giving ``self_attn`` and ``mlp`` tensors their own t
gradients over the layers. Every parameter takes what mergekit's YAML takes (see
:func:`parameter_setting`): a number, a gradient (a list interpolated over the layers), or
per-parameter filters (first filter contained in the tensor name wins, then the fallback).

:func:`mergekit_config` writes that configuration for local model folders; the methods are
registered in :mod:`fusekernels.pipeline.merge_registry` and run through
:func:`fusekernels.pipeline.merge.merge_models`, with the same output safety as the streamed
VaRM / linear merge. mergekit is an optional dependency (``pip install fusekernels[merge]``).
"""
from __future__ import annotations

import math
import os
from functools import partial
from pathlib import Path
from typing import Sequence

from .merge_registry import register_merge_method

_FALLBACK = (None, "*")


# ------------------------------------------------------------------ parameter values
def _number(value, name: str, check) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, a list of numbers (a gradient over the layers) or "
                         f"per-parameter filters, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if check is not None:
        check(value)
    return value


def _scalar_or_gradient(value, name: str, check):
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"{name}: a gradient needs at least one value")
        return [_number(v, name, check) for v in value]
    return _number(value, name, check)


def _is_conditional_list(value) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) > 0
            and all(isinstance(e, dict) and "value" in e and set(e) <= {"filter", "value"} for e in value))


def parameter_setting(value, name: str = "parameter", check=None):
    """A mergekit parameter value (what its YAML takes) from a Python value, validated.

    - a number: the same value for every tensor;
    - a list of numbers: a gradient, interpolated over the layers (mergekit's rule);
    - a mapping ``{filter: value}``: the first filter contained in the tensor name gives the
      value (a number or a gradient); the key ``None`` or ``"*"`` is the fallback (placed last);
    - a list of ``{"filter": ..., "value": ...}`` entries, as in mergekit's YAML (the entry
      without a filter is the fallback and must come last).

    ``check(number)`` raises ValueError for an out-of-range number. Returns plain Python data
    (float, list of floats, or list of ``{"filter", "value"}`` dicts).
    """
    if isinstance(value, dict):
        entries = [{"filter": k, "value": v} for k, v in value.items() if k not in _FALLBACK]
        entries += [{"value": v} for k, v in value.items() if k in _FALLBACK]
        if not entries:
            raise ValueError(f"{name}: no filter given")
        value = entries
    if _is_conditional_list(value):
        out = []
        for i, entry in enumerate(value):
            flt = entry.get("filter")
            if flt is not None and (not isinstance(flt, str) or not flt):
                raise ValueError(f"{name}: a filter must be a non-empty string, got {flt!r}")
            if flt in _FALLBACK and i != len(value) - 1:
                raise ValueError(f"{name}: the fallback value (no filter) must come last, or the filters after it "
                                 "are never used")
            item = {"value": _scalar_or_gradient(entry["value"], name, check)}
            if flt not in _FALLBACK:
                item = {"filter": flt, **item}
            out.append(item)
        return out
    return _scalar_or_gradient(value, name, check)


def parse_setting(text: str):
    """Parse the command-line form of a parameter value into :func:`parameter_setting` data.

    ``0.5`` (a number), ``0,0.5,1`` (a gradient over the layers), or ``;``-separated entries
    ``FILTER=VALUES`` plus an optional last fallback ``VALUES``, e.g. FuseChat's published SLERP
    ``self_attn=0,0.5,0.3,0.7,1;mlp=1,0.5,0.7,0.3,0;0.5``.
    """
    def values(part):
        items = [x.strip() for x in part.split(",")]
        try:
            numbers = [float(x) for x in items]
        except ValueError:
            raise ValueError(f"cannot read {part!r} as a number or comma-separated numbers") from None
        return numbers[0] if len(numbers) == 1 else numbers

    entries = [e.strip() for e in str(text).split(";") if e.strip()]
    if not entries:
        raise ValueError(f"empty parameter value {text!r}")
    if len(entries) == 1 and "=" not in entries[0]:
        return values(entries[0])
    out = []
    for entry in entries:
        if "=" in entry:
            flt, _, rest = entry.partition("=")
            if not flt.strip():
                raise ValueError(f"missing filter name before '=' in {entry!r}")
            out.append({"filter": flt.strip(), "value": values(rest)})
        else:
            out.append({"value": values(entry)})
    return out


def parse_cli_setting(tokens: Sequence[str]):
    """``--t`` tokens: several plain numbers form a gradient (``--t 0 0.5 1``); otherwise the
    tokens are entries of one value (``--t self_attn=0,1 mlp=1,0 0.5``)."""
    tokens = [str(t) for t in tokens]
    if len(tokens) > 1 and not any(c in tok for tok in tokens for c in "=,;"):
        return [parse_setting(tok) for tok in tokens]
    return parse_setting(";".join(tokens))


def _per_model(name, value, n, default, check):
    """One setting per target: ``value`` is one setting for all, or a list of one per target."""
    if value is None:
        return [default] * n
    if isinstance(value, (list, tuple)) and not _is_conditional_list(value):
        values = list(value)
        if len(values) == 1:
            values = values * n
        if len(values) != n:
            raise ValueError(f"{name} has {len(values)} entries for {n} targets (give one, or one per target)")
        return [parameter_setting(v, name, check) for v in values]
    return [parameter_setting(value, name, check)] * n


def _in_unit(name, low_open=False):
    def check(x):
        if not ((0.0 < x if low_open else 0.0 <= x) and x <= 1.0):
            raise ValueError(f"{name} must lie in {'(0, 1]' if low_open else '[0, 1]'}, got {x}")
    return check


# ------------------------------------------------------------------ configuration and run
_USES_DENSITY = ("ties", "dare_ties", "dare_linear")
_RANDOM = ("dare_ties", "dare_linear")


def mergekit_config(targets: Sequence[str | os.PathLike], method: str, *, base=None, weights=None,
                    density=None, t=None, normalize: bool | None = None, dtype: str | None = None) -> dict:
    """The mergekit configuration (a dict, as the YAML file would hold) of a FuseChat merge.

    Args:
        targets: model folders (Hugging Face format) of the target models, same architecture.
        method: "ties", "dare_ties", "dare_linear", "task_arithmetic" or "slerp".
        base: the pivot / common starting model folder (all methods but "slerp").
        weights: per-target weights: one value for all, or one per target (default 1 each,
            normalised when ``normalize``); each a :func:`parameter_setting` (number, gradient
            or per-parameter filters). Not used by "slerp".
        density: fraction of each task vector kept by TIES / DARE, in (0, 1] (one value or one
            per target, each a parameter setting; default 0.5 as in FuseChat).
        t: SLERP interpolation in [0, 1] (0 = first target, 1 = second): a number, a gradient over
            the layers or per-parameter filters, e.g. FuseChat's published
            ``{"self_attn": [0, 0.5, 0.3, 0.7, 1], "mlp": [1, 0.5, 0.7, 0.3, 0], "*": 0.5}``.
        normalize: divide by the sum of the weights (default True, as FuseChat).
        dtype: "float32" | "bfloat16" | "float16" output dtype; None = mergekit's default.
    """
    methods = _USES_DENSITY + ("task_arithmetic", "slerp")
    if method not in methods:
        raise ValueError(f"method must be one of {methods}, got {method!r}")
    targets = [str(Path(p)) for p in targets]
    if method == "slerp":
        if len(targets) != 2:
            raise ValueError(f"method='slerp' interpolates exactly two targets, got {len(targets)}")
        if weights is not None or density is not None or normalize is not None:
            raise ValueError("method='slerp' takes t=, not weights=, density= or normalize=")
        ts = parameter_setting(0.5 if t is None else t, "t", _in_unit("t"))
        # mergekit interpolates from base_model (t = 0) to the other model; it must be one of the two
        config = {"models": [{"model": targets[0]}, {"model": targets[1]}], "merge_method": "slerp",
                  "base_model": targets[0], "parameters": {"t": ts}}
    else:
        if t is not None:
            raise ValueError("t= is only used by method='slerp'")
        if base is None:
            raise ValueError(f"method={method!r} needs base= (the pivot model the targets were trained from)")
        if not targets:
            raise ValueError("targets must list at least one model folder")
        w = _per_model("weights", weights, len(targets), 1.0, None)
        models = [{"model": str(Path(base))}]
        if method in _USES_DENSITY:
            d = _per_model("density", density, len(targets), 0.5, _in_unit("density", low_open=True))
            models += [{"model": p, "parameters": {"weight": wi, "density": di}} for p, wi, di in zip(targets, w, d)]
        else:
            if density is not None:
                raise ValueError("density= is only used by ties / dare_ties / dare_linear")
            models += [{"model": p, "parameters": {"weight": wi}} for p, wi in zip(targets, w)]
        config = {"models": models, "merge_method": method, "base_model": str(Path(base)),
                  "parameters": {"normalize": True if normalize is None else bool(normalize)}}
    if dtype is not None:
        if dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
        config["dtype"] = dtype
    return config


def _reported_weights(config: dict) -> list[float] | None:
    """Per-target weights for the report when every one is a plain number (else None)."""
    if config["merge_method"] == "slerp":
        t = config["parameters"]["t"]
        return [1.0 - t, t] if isinstance(t, float) else None
    weights = [m["parameters"]["weight"] for m in config["models"][1:]]
    if not all(isinstance(w, float) for w in weights):
        return None
    total = sum(weights)
    return [w / total for w in weights] if config["parameters"]["normalize"] and total else weights


def _check_model_folder(path, what):
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    if not (path.is_dir() and (path / "config.json").is_file()):
        raise ValueError(f"{what} {path} must be a model folder with a config.json (mergekit merges "
                         "Hugging Face model folders)")


def _validate(targets, base, *, method: str, seed=None, **params):
    """Everything :func:`run_mergekit` would refuse, checked before any output exists."""
    mergekit_config(targets, method, base=base, **params)
    for path in targets:
        _check_model_folder(path, "target")
    if base is not None:
        _check_model_folder(base, "base")
    try:
        import mergekit.merge  # noqa: F401
    except ImportError as err:
        raise ImportError(f"method={method!r} needs mergekit: pip install 'fusekernels[merge]' ({err})") from None


def run_mergekit(targets: Sequence[str | os.PathLike], output: str | os.PathLike, *, method: str, base=None,
                 max_shard_size: int = 2 * 1024**3, seed: int | None = None, copy_tokenizer: bool = True,
                 **params) -> list[float] | None:
    """Run one mergekit merge into the (existing, empty) folder ``output``.

    ``params`` as in :func:`mergekit_config`; ``seed`` seeds DARE's random drops (default 0: the
    same seed gives the same merge). Called by ``merge_models``, which checks the output and
    writes through a temporary folder. Returns the per-target weights when they are plain numbers.
    """
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    config = mergekit_config(targets, method, base=base, **params)
    options = MergeOptions(copy_tokenizer=copy_tokenizer, random_seed=int(seed or 0),
                           out_shard_size=int(max_shard_size), quiet=True, lazy_unpickle=True,
                           write_model_card=False)
    run_merge(MergeConfiguration.model_validate(config), str(output), options=options)
    return _reported_weights(config)


def _register(name, summary, options, **spec):
    # seed= is mergekit's run option (random_seed): only DARE's drops use it
    register_merge_method(name, partial(run_mergekit, method=name), whole_model=True, options=options + ("seed",),
                          validate=partial(_validate, method=name), summary=summary, **spec)


_register("ties", "TIES-merging of the task vectors (mergekit; FuseChat: weights, density 0.5)",
          ("weights", "density", "normalize", "dtype"), base="required")
_register("dare_ties", "DARE drops + TIES sign consensus (mergekit; seed= seeds the drops)",
          ("weights", "density", "normalize", "dtype"), base="required")
_register("dare_linear", "DARE drops + weighted sum of the task vectors (mergekit)",
          ("weights", "density", "normalize", "dtype"), base="required")
_register("task_arithmetic", "weighted sum of the task vectors (mergekit)",
          ("weights", "normalize", "dtype"), base="required")
_register("slerp", "spherical interpolation of two targets, t per layer / per filter (mergekit)",
          ("t", "dtype"), min_targets=2, max_targets=2)
