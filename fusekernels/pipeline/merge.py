"""Parameter-space merging of target models (FuseChat VaRM, linear, mergekit's methods).

Every method lives in one registry (:mod:`fusekernels.pipeline.merge_registry`, re-exported
here with the built-in methods registered): :func:`merge_models`, the CLI's ``--method`` choices,
the FuseChat recipe and the docs read it. Adding a method is one function plus one
:func:`register_merge_method` call.

VaRM (variation-ratio merge): for each tensor name ``p`` and target model ``m`` the variation
``v[m] = mean((theta_m[p] - theta_base[p]) ** 2)`` is its mean squared change relative to the
common starting (base) model. Merge weights are ``w = v / sum(v)`` (``temperature=None``, the
paper's rule), or ``w = softmax(v / temperature)``; the merged tensor is ``sum_m w[m] * theta_m[p]``.
When a model left the tensor unchanged (``v[m] == 0``), ``zero_variation`` decides:
``"uniform"`` (default) gives every model the same weight for that tensor, as the published
FuseChat merge code does whenever ANY model's variation is 0; ``"ratio"`` keeps ``v / sum(v)``,
so the unchanged model gets weight 0 (uniform only when no model changed it). ``linear`` is the
baseline: fixed weights per model (uniform by default) for every tensor.

Rounding: a weighted bf16 / fp16 tensor is computed as ``sum_m w[m] * x[m] / sum_m w[m]`` in
float64 with the weights as given (e.g. 1, 1, 2, or 0.3 read as 3/10) and rounded once, so
bf16 / fp16 merges are correctly rounded (in the tests a linear merge of bf16 / fp16
checkpoints equals mergekit's bit for bit; mergekit rounds decimal weights to float32 first,
so it is given 3 / 5 / 2 for 0.3 / 0.5 / 0.2). float32 tensors keep float32 arithmetic, as
mergekit (see :func:`combine`).

Streaming: tensors are read with ``safetensors.safe_open``, one tensor of each model at a time,
and no file stays mapped between reads, so peak memory is about (number of targets + 3) copies
of the largest tensor (plus bounded float64 blocks for bf16 / fp16) and the output shard being
filled, independent of the model size. Output shards are written as soon as they reach
``max_shard_size`` bytes.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:  # annotations only: torch is imported where a merge runs
    import torch

from .._optional import require
from ..storage import atomic_dir, check_output_dir, check_writable
from .merge_registry import (
    MERGE_METHODS,
    MergeMethod,
    MergeReport,
    TensorMerge,
    get_merge_method,
    merge_method_names,
    merge_methods,
    register_merge_method,
    unregister_merge_method,
)

__all__ = ["merge_models", "variation_weights", "MergeReport", "TensorMerge", "MergeMethod", "MERGE_METHODS",
           "SafetensorsCheckpoint", "register_merge_method", "unregister_merge_method", "get_merge_method",
           "merge_method_names", "merge_methods", "check_merge_output", "ZERO_VARIATION_RULES"]

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
# Files that are weights in another format: never copied next to the merged safetensors.
_NOT_COPIED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack")
ZERO_VARIATION_RULES = ("uniform", "ratio")
_SCRATCH = 1 << 21  # elements per float64 accumulation block (16 MiB)


class SafetensorsCheckpoint:
    """Read-only view of a safetensors checkpoint (one file, a sharded folder with its index, or a
    folder of ``*.safetensors`` files) that loads one tensor at a time.

    Each :meth:`get` opens the file, copies that tensor out and closes the file again: a handle
    kept open would keep every page it ever touched mapped (and counted as resident), so the
    memory of a merge would grow to the size of all inputs."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._entries = _index_checkpoint(self.path)  # key -> (file, shape, dtype name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Nothing stays open between calls; kept so the class works as a context manager."""

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._entries[key][1]

    def dtype_name(self, key: str) -> str:
        return self._entries[key][2]

    def get(self, key: str):
        """The tensor ``key`` (a CPU torch tensor in its stored dtype)."""
        from safetensors import safe_open

        with safe_open(str(self._entries[key][0]), framework="pt") as f:
            return f.get_tensor(key)


# ---------------------------------------------------------------------------- VaRM and linear
def _check_variations(variations) -> list[float]:
    v = [float(x) for x in variations]
    if not v:
        raise ValueError("variations must not be empty")
    if not all(math.isfinite(x) and x >= 0 for x in v):
        raise ValueError(f"variations must be finite and >= 0, got {v}")
    return v


def _varm_raw_weights(variations, temperature=None, zero_variation="uniform") -> list[float]:
    """Unnormalised VaRM weights: the variations, all ones, or the softmax probabilities."""
    v = _check_variations(variations)
    if zero_variation not in ZERO_VARIATION_RULES:
        raise ValueError(f"zero_variation must be one of {ZERO_VARIATION_RULES}, got {zero_variation!r}")
    if temperature is not None and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if zero_variation == "uniform" and any(x == 0 for x in v):
        return [1.0] * len(v)  # the published merge: one unchanged model -> uniform weights
    if temperature is not None:
        top = max(x / temperature for x in v)
        return [math.exp(x / temperature - top) for x in v]
    if sum(v) == 0:
        return [1.0] * len(v)
    return v


def variation_weights(variations: Sequence[float], temperature: float | None = None,
                      zero_variation: str = "uniform") -> list[float]:
    """VaRM merge weights (summing to 1) from per-model variations (mean squared change).

    ``v / sum(v)``, or ``softmax(v / temperature)``. ``zero_variation="uniform"`` (default, the
    published FuseChat merge): uniform weights as soon as any model's variation is 0;
    ``"ratio"``: keep ``v / sum(v)`` (uniform only when every variation is 0).
    """
    raw = _varm_raw_weights(variations, temperature, zero_variation)
    total = math.fsum(raw)
    return [x / total for x in raw]


def _validate_varm(targets, base, temperature=None, zero_variation="uniform"):
    _varm_raw_weights([1.0], temperature, zero_variation)


def varm(name, tensors, base, *, temperature=None, zero_variation="uniform") -> TensorMerge:
    """VaRM weights of one tensor: each target's mean squared change from the base."""
    reference = base.float()
    variations = [_mean_squared_change(t, reference) for t in tensors]
    return TensorMerge(_varm_raw_weights(variations, temperature, zero_variation), variations)


def _linear_weights(weights, n: int) -> list[float]:
    """Unnormalised linear weights (one number per target; default all 1)."""
    if weights is None:
        return [1.0] * n
    if isinstance(weights, (int, float)) and not isinstance(weights, bool):
        weights = [weights]
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in weights):
        raise ValueError(f"weights of method='linear' are one number per target, got {weights!r} (per-parameter "
                         "filters and gradients are mergekit's: ties, dare_*, task_arithmetic, slerp)")
    w = [float(x) for x in weights]
    if len(w) != n:
        raise ValueError(f"weights has {len(w)} entries for {n} targets")
    if not all(math.isfinite(x) for x in w) or math.fsum(w) == 0:
        raise ValueError(f"weights must be finite with a non-zero sum, got {w}")
    return w


def linear(name, tensors, base, *, weights=None) -> list[float]:
    """The same weights for every tensor (normalised by merge_models)."""
    return _linear_weights(weights, len(tensors))


register_merge_method(
    "varm", varm, base="required", options=("temperature", "zero_variation"),
    validate=_validate_varm,
    summary="FuseChat VaRM: weights from each target's mean squared change from the base, per tensor (streamed)")
register_merge_method(
    "linear", linear, options=("weights",),
    validate=lambda targets, base, weights=None: _linear_weights(weights, len(targets)),
    summary="fixed weights per target, uniform by default (streamed)")

from . import mergekit_merge  # noqa: E402,F401  (registers mergekit's methods after these two)


# ---------------------------------------------------------------------------- merge_models
def merge_models(targets: Sequence[str | os.PathLike], output: str | os.PathLike, *, method: str = "varm",
                 base: str | os.PathLike | None = None, weights=None, temperature: float | None = None,
                 zero_variation: str | None = None, density=None, t=None, normalize: bool | None = None,
                 dtype: str | None = None, seed: int | None = None, max_shard_size: int = 2 * 1024**3,
                 copy_side_files: bool = True, progress: bool = True) -> MergeReport:
    """Merge target checkpoints of one architecture with a registered method.

    Args:
        targets: >= 1 safetensors checkpoints (file or folder) with identical tensor names and
            shapes (model folders for the mergekit methods).
        output: a folder (shards + index, config/tokenizer files copied from the first target
            folder when ``copy_side_files``) or a path ending in ``.safetensors`` (one file;
            streamed methods only).
        method: a name of :func:`merge_method_names`: ``"varm"`` (needs ``base``) and
            ``"linear"``, streamed here, or mergekit's ``"ties"``, ``"dare_ties"``,
            ``"dare_linear"``, ``"task_arithmetic"`` (need ``base``) and ``"slerp"`` (two
            targets), or any method added with :func:`register_merge_method`.
        base: the common starting checkpoint (VaRM, TIES, DARE, task arithmetic).
        weights: linear: one number per target (normalised to sum 1; default uniform); mergekit
            methods: one value for all or one per target, each a number, a gradient over the
            layers or per-parameter filters (see :func:`~fusekernels.pipeline.mergekit_merge.parameter_setting`).
        temperature: VaRM softmax temperature; ``None`` = plain normalisation ``v / sum(v)``.
        zero_variation: VaRM when a target left a tensor unchanged: ``"uniform"`` (default, the
            published FuseChat merge) or ``"ratio"`` (that target gets weight 0).
        density, t, normalize, dtype, seed: mergekit's parameters (TIES / DARE density, SLERP
            t, normalisation of the weights, output dtype, seed of DARE's drops).
        max_shard_size: bytes per output shard (folder output only).
    Options a method does not take are refused naming them (None = not given). The output
    must not exist (or be an empty folder) and must not be, contain or lie inside an input; it
    is written under a temporary name and renamed when complete. Streamed methods write each
    floating tensor in the first target's dtype (:func:`combine`: bf16 / fp16 computed in float64
    and rounded once); other tensors (integer buffers) must be identical in every target and
    are copied.
    """
    spec = get_merge_method(method)
    given = dict(weights=weights, temperature=temperature, zero_variation=zero_variation, density=density, t=t,
                 normalize=normalize, dtype=dtype, seed=seed)
    options = {k: v for k, v in given.items() if v is not None}
    targets = list(targets)
    spec.check(len(targets), base, options)
    if max_shard_size <= 0:
        raise ValueError(f"max_shard_size must be > 0, got {max_shard_size}")
    if spec.whole_model and _is_file_output(Path(output)):
        raise ValueError(f"method={spec.name!r} writes a model folder: output must not end in .safetensors")
    if spec.validate is not None:
        spec.validate([str(p) for p in targets], None if base is None else str(base), **options)
    check_merge_output(output, [*targets, base])
    if spec.whole_model:
        return _merge_whole_model(spec, targets, output, base, options, max_shard_size)
    return _merge_streamed(spec, targets, output, base, options, max_shard_size, copy_side_files, progress)


def _merge_whole_model(spec: MergeMethod, targets, output, base, options, max_shard_size) -> MergeReport:
    final = Path(output)
    with atomic_dir(final) as tmp:
        configured = spec.function([str(p) for p in targets], tmp, base=None if base is None else str(base),
                                   max_shard_size=max_shard_size, **options)
    report = MergeReport(method=spec.name)
    report.files = sorted(str(final / p.name) for p in final.glob("*.safetensors"))
    with SafetensorsCheckpoint(final) as merged:
        for key in merged.keys():
            report.num_parameters += math.prod(merged.shape(key))
            report.weights[key] = [] if configured is None else [float(w) for w in configured]
    return report


def _merge_streamed(spec: MergeMethod, targets, output, base, options, max_shard_size, copy_side_files,
                    progress) -> MergeReport:
    import torch

    report = MergeReport(method=spec.name)
    with contextlib.ExitStack() as stack:
        models = [stack.enter_context(SafetensorsCheckpoint(p)) for p in targets]
        base_model = stack.enter_context(SafetensorsCheckpoint(base)) if base is not None else None
        keys = _check_same_layout(models, base_model, [str(p) for p in targets], base)
        final = Path(output)
        # Everything is written under a temporary sibling and renamed into place at the end:
        # an interrupted merge leaves no half-written output.
        staging = Path(stack.enter_context(_atomic_output(final)))
        writer = _ShardWriter(staging, max_shard_size)
        for key in _progress(keys, progress, "merge"):
            tensors = [m.get(key) for m in models]  # one tensor of each model at a time
            first = tensors[0]
            if not first.is_floating_point():
                _check_identical(key, tensors)
                writer.add(key, first)
                continue
            reference = base_model.get(key) if base_model is not None else None
            result = spec.function(key, tensors, reference, **options)
            del reference
            if isinstance(result, torch.Tensor):
                if tuple(result.shape) != tuple(first.shape) or not result.is_floating_point():
                    raise ValueError(f"method={spec.name!r} returned a {result.dtype} tensor of shape "
                                     f"{tuple(result.shape)} for {key!r} of shape {tuple(first.shape)}")
                merged = result.to(first.dtype)
            else:
                if not isinstance(result, TensorMerge):
                    result = TensorMerge(result)
                w = _checked_weights(spec.name, key, result.weights, len(tensors))
                merged = combine(tensors, w, first.dtype)
                total = math.fsum(w)
                report.weights[key] = [x / total for x in w]
                if result.variations is not None:
                    report.variations[key] = [float(x) for x in result.variations]
            del tensors, result
            report.num_parameters += merged.numel()
            writer.add(key, merged)
        written = writer.close()
        if copy_side_files and not _is_file_output(final):
            _copy_side_files(Path(targets[0]), staging)
    report.files = [str(final) if _is_file_output(final) else str(final / Path(f).name) for f in written]
    return report


def _checked_weights(method, key, weights, n) -> list[float]:
    w = [float(x) for x in weights]
    if len(w) != n:
        raise ValueError(f"method={method!r} returned {len(w)} weights for {n} targets at {key!r}")
    if not all(math.isfinite(x) for x in w) or math.fsum(w) == 0:
        raise ValueError(f"method={method!r} returned weights {w} at {key!r}: they must be finite with a "
                         "non-zero sum")
    return w


def combine(tensors: Sequence, weights: Sequence[float], dtype):
    """``sum_m weights[m] * tensors[m] / sum_m weights[m]`` in ``dtype``.

    tensors: same-shape floating CPU tensors (any float dtypes); weights: floats, any scale,
    non-zero sum (short decimals are read as the decimals they print as: 0.3 is 3/10).

    - bf16 / fp16 (and narrower) outputs: accumulated in float64 over blocks of ``2**21``
      elements (the scratch stays bounded) and rounded once (:func:`round_from_float64`).
      With integer or short decimal weights (uniform, FuseChat's 1:2, 0.25 / 0.75) the float64
      sum of bf16 / fp16 values is exact, so the result is the correctly rounded one; other
      weights (VaRM's variations) are within one float64 rounding of it.
    - float32 / float64 outputs: accumulated in that dtype, integer weights raw and divided once
      by their sum as mergekit's linear merge does, other weights normalised first (the last
      float32 bit is not guaranteed).
    """
    import torch

    weights = _integer_weights(weights)
    total = math.fsum(weights)
    if dtype in (torch.float32, torch.float64):
        # integer weights: raw, one division (mergekit's arithmetic); others: normalised first,
        # so that weights like [0, 1, 0] give a target's tensor exactly
        integers = all(float(w).is_integer() for w in weights)
        out = torch.zeros(tensors[0].shape, dtype=dtype)
        for weight, tensor in zip(weights, tensors):
            out.add_(tensor, alpha=weight if integers else weight / total)
        return out.div_(total) if integers else out
    out = torch.empty(tensors[0].shape, dtype=dtype)
    flat_out = out.view(-1)
    flats = [t.reshape(-1) for t in tensors]
    n = flat_out.numel()
    # reused float64 blocks; few, large blocks keep the number of (multi-threaded) ops small
    acc = torch.empty(min(n, _SCRATCH), dtype=torch.float64)
    part = torch.empty_like(acc)
    for start in range(0, n, _SCRATCH):
        stop = min(n, start + _SCRATCH)
        a, b = acc[:stop - start], part[:stop - start]
        a.copy_(flats[0][start:stop]).mul_(weights[0])
        for weight, flat in zip(weights[1:], flats[1:]):
            a.add_(b.copy_(flat[start:stop]), alpha=weight)  # exact products, float64 sums
        a.div_(total)
        flat_out[start:stop] = round_from_float64(a, dtype)
    return out


def _integer_weights(weights: Sequence[float]) -> list[float]:
    """The weights scaled to small integers when they are short decimals (0.3, 0.5, 0.2 ->
    3, 5, 2; the merge divides by their sum, so the scale is free): the products with bf16 /
    fp16 values and their sums are then exact in float64, and a result exactly halfway between
    two representable values (frequent with such weights) rounds to even as it should, not by
    the sign of the float64 error in 0.3. Other weights are returned as they are."""
    fractions = [Fraction(repr(float(w))) for w in weights]
    scale = math.lcm(*(f.denominator for f in fractions))
    scaled = [f * scale for f in fractions]
    if max(abs(f) for f in scaled) <= 2**24:
        return [float(f) for f in scaled]
    return [float(w) for w in weights]


def round_from_float64(values, dtype):
    """Round a float64 tensor once (to nearest, ties to even) to ``dtype``.

    torch converts float64 to bf16 / fp16 through float32, which rounds twice: it misses by one
    ulp where the float32 value lands exactly halfway between two ``dtype`` values although
    the float64 one is not halfway. Only those elements (found from the float32 bits) are
    redone, rounding to float32 "to odd" first (truncate, set the last bit when inexact):
    float32 keeps >= 2 more significand bits than bf16 / fp16, so the second rounding is then
    the correct one.
    """
    import torch

    if dtype == torch.float64:
        return values
    single = values.to(torch.float32)
    if dtype == torch.float32:
        return single
    out = single.to(dtype)
    bits = single.view(torch.int32)
    if dtype == torch.bfloat16:  # bf16 is the top half of float32, subnormals included
        suspect = (bits & 0xFFFF) == 0x8000
    elif dtype == torch.float16:  # 13 dropped bits in fp16's normal range; its subnormals all
        suspect = ((bits & 0x1FFF) == 0x1000) | (single.abs() < 2.0**-14)
    else:
        suspect = torch.ones_like(bits, dtype=torch.bool)
    index = suspect.reshape(-1).nonzero().reshape(-1)
    if index.numel():
        out.view(-1)[index] = _round_to_odd_first(values.reshape(-1)[index], dtype)
    return out


def _round_to_odd_first(values, dtype):
    """float64 -> float32 rounded to odd, then -> ``dtype`` (one correct rounding)."""
    import torch

    single = values.to(torch.float32)
    back = single.to(torch.float64)
    inexact = back != values
    bits = single.view(torch.int32)
    bits = bits - (inexact & (back.abs() > values.abs())).to(torch.int32)  # one step toward zero
    bits = bits | inexact.to(torch.int32)
    return bits.view(torch.float32).to(dtype)


def _is_file_output(output: Path) -> bool:
    return str(output).endswith(".safetensors")


def check_merge_output(output: str | os.PathLike, inputs: Sequence) -> Path:
    """Refuse, before any work, an output that exists non-empty (a folder with files, or an
    existing ``.safetensors`` file), that is, contains or lies inside an input checkpoint, or
    that cannot be written. Raises ValueError / PermissionError naming ``output``."""
    out = Path(output)
    if _is_file_output(out):
        resolved = out.expanduser().resolve()
        if resolved.exists():
            raise ValueError(f"output {output} already exists; merges never overwrite a file")
        for given in inputs:
            if given is not None and _path_overlaps(resolved, Path(given).expanduser().resolve()):
                raise ValueError(f"output {output} overlaps the input {given}: write to a separate path")
        check_writable(resolved.parent, arg="output", target=output)
        return resolved
    return check_output_dir(out, inputs=[i for i in inputs if i is not None], arg="output")


def _path_overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


@contextlib.contextmanager
def _atomic_output(final: Path):
    """Staging location of a merge output: a temporary folder renamed to ``final`` on success,
    or, for a ``.safetensors`` file output, a temporary folder whose single file is renamed."""
    if not _is_file_output(final):
        with atomic_dir(final) as tmp:
            yield tmp
        return
    final = final.expanduser().resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp / final.name
        os.replace(tmp / final.name, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _mean_squared_change(tensor, reference) -> float:
    """mean((tensor - reference) ** 2) in float32 (torch's CPU sum is a cascaded, accurate one)."""
    if tensor.numel() == 0:
        return 0.0
    diff = tensor.float() - reference
    return float(diff.square_().sum()) / diff.numel()


def _index_checkpoint(path: Path) -> dict[str, tuple[Path, tuple[int, ...], str]]:
    """Map tensor name -> (file, shape, dtype name) for a safetensors file or folder."""
    require("safetensors", "merge_models")
    from safetensors import SafetensorError, safe_open

    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        index = path / INDEX_NAME
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            missing = sorted({f for f in weight_map.values() if not (path / f).is_file()})
            if missing:
                raise FileNotFoundError(f"{index} lists missing shard file(s) {missing}")
            files = sorted({path / f for f in weight_map.values()})
        else:
            files = sorted(path.glob("*.safetensors"))
            if not files:
                raise FileNotFoundError(f"no .safetensors file in {path}")
    else:
        files = [path]
    entries = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    if key in entries:
                        raise ValueError(f"tensor {key!r} appears in two files of {path}")
                    meta = f.get_slice(key)
                    entries[key] = (file, tuple(meta.get_shape()), meta.get_dtype())
        except (SafetensorError, OSError) as err:
            raise ValueError(f"cannot read safetensors file {file}: {err}") from err
    return entries


def _check_same_layout(models, base_model, names, base_name) -> list[str]:
    keys = models[0].keys()
    key_set = set(keys)
    others = list(zip(models[1:], names[1:]))
    if base_model is not None:
        others.append((base_model, f"base {base_name}"))
    for model, name in others:
        other = set(model.keys())
        if other != key_set:
            missing = sorted(key_set - other)[:5]
            extra = sorted(other - key_set)[:5]
            raise ValueError(f"tensor names differ between {names[0]} and {name}: missing {missing}, extra {extra}")
        for key in keys:
            if model.shape(key) != models[0].shape(key):
                raise ValueError(f"tensor {key!r} has shape {model.shape(key)} in {name} but "
                                 f"{models[0].shape(key)} in {names[0]}")
    return keys


def _check_identical(key, tensors):
    import torch

    first = tensors[0]
    for tensor in tensors[1:]:
        if not torch.equal(tensor, first):
            raise ValueError(f"non-floating tensor {key!r} ({first.dtype}) differs between targets; cannot merge it")


class _ShardWriter:
    """Writes merged tensors into shards of at most ``max_shard_size`` bytes (or one file)."""

    def __init__(self, output: Path, max_shard_size: int):
        self.single_file = output.suffix == ".safetensors"
        self.output = output
        self.max_shard_size = max_shard_size
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.shards: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0
        (output.parent if self.single_file else output).mkdir(parents=True, exist_ok=True)

    def add(self, key: str, tensor: torch.Tensor):
        size = tensor.numel() * tensor.element_size()
        if not self.single_file and self.pending and self.pending_bytes + size > self.max_shard_size:
            self._flush()
        self.pending[key] = tensor.contiguous()
        self.pending_bytes += size
        self.total_bytes += size

    def _flush(self):
        from safetensors.torch import save_file

        path = self.output if self.single_file else self.output / f".shard-{len(self.shards):05d}.tmp"
        save_file(self.pending, str(path), metadata={"format": "pt"})
        self.shards.append((path, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> list[str]:
        if self.pending or not self.shards:
            self._flush()
        if self.single_file:
            return [str(self.output)]
        n = len(self.shards)
        if n == 1:
            final = [self.output / WEIGHTS_NAME]
        else:
            final = [self.output / f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        weight_map = {}
        for (tmp, keys), dest in zip(self.shards, final):
            os.replace(tmp, dest)
            weight_map.update({k: dest.name for k in keys})
        if n > 1:
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
            (self.output / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True))
        return [str(p) for p in final]


def _copy_side_files(source: Path, output: Path):
    """Copy config / tokenizer files of the first target folder so the output loads directly."""
    if not source.is_dir():
        return
    for file in source.iterdir():
        if file.is_file() and file.name != INDEX_NAME and not file.name.endswith(_NOT_COPIED_SUFFIXES):
            if not (output / file.name).exists():
                shutil.copy2(file, output / file.name)


def _progress(items: Iterable, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="tensor")
