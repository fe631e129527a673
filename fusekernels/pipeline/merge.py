"""Parameter-space merging of target models (FuseChat VaRM), streamed from safetensors.

VaRM (variation-ratio merge): for each tensor name ``p`` and target model ``m`` the variation
``v[m] = mean((theta_m[p] - theta_base[p]) ** 2)`` is its mean squared change relative to the
common starting (base) model. Merge weights are ``w = v / sum(v)`` (``temperature=None``, as
published), or ``w = softmax(v / temperature)``; the merged tensor is ``sum_m w[m] * theta_m[p]``.
A tensor that no model changed (``sum(v) == 0``) gets uniform weights. ``linear`` is the
baseline: fixed weights per model (uniform by default) for every tensor.

Streaming: tensors are read with ``safetensors.safe_open``, one tensor of each model at a time,
and no file stays mapped between reads, so peak memory is about (number of targets + 3) copies
of the largest tensor plus the output shard being filled, independent of the model size.
Output shards are written as soon as they reach ``max_shard_size`` bytes.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch

from .._optional import require
from ..storage import atomic_dir, check_output_dir, check_writable

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
# Files that are weights in another format: never copied next to the merged safetensors.
_NOT_COPIED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack")


@dataclass
class MergeReport:
    """What a merge did: per-tensor weights (one per target model) and the files written."""
    method: str
    weights: dict[str, list[float]] = field(default_factory=dict)
    variations: dict[str, list[float]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    num_parameters: int = 0


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

    def get(self, key: str) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(self._entries[key][0]), framework="pt") as f:
            return f.get_tensor(key)


def variation_weights(variations: Sequence[float], temperature: float | None = None) -> list[float]:
    """Merge weights from per-model variations (mean squared change): ``v / sum(v)`` or
    ``softmax(v / temperature)``; uniform when no model changed the tensor."""
    v = torch.tensor([float(x) for x in variations], dtype=torch.float64)
    if v.numel() == 0:
        raise ValueError("variations must not be empty")
    if not torch.isfinite(v).all() or (v < 0).any():
        raise ValueError(f"variations must be finite and >= 0, got {v.tolist()}")
    if temperature is not None:
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        return torch.softmax(v / temperature, dim=0).tolist()
    total = v.sum()
    if total == 0:
        return [1.0 / len(v)] * len(v)
    return (v / total).tolist()


STREAMED_METHODS = ("varm", "linear")  # merged here, tensor by tensor; the others run through mergekit


def merge_methods() -> tuple[str, ...]:
    """Every ``method`` :func:`merge_models` takes: VaRM and linear, then mergekit's."""
    from .mergekit_merge import MERGEKIT_METHODS

    return STREAMED_METHODS + MERGEKIT_METHODS


def merge_models(targets: Sequence[str | os.PathLike], output: str | os.PathLike, *, method: str = "varm",
                 base: str | os.PathLike | None = None, weights: Sequence[float] | None = None,
                 temperature: float | None = None, max_shard_size: int = 2 * 1024**3,
                 copy_side_files: bool = True, progress: bool = True, density=None, t=0.5,
                 normalize: bool = True, dtype: str | None = None, seed: int = 0) -> MergeReport:
    """Merge target checkpoints of one architecture tensor by tensor.

    Args:
        targets: >= 1 safetensors checkpoints (file or folder) with identical tensor names and shapes.
        output: a folder (shards + index, config/tokenizer files copied from the first target
            folder when ``copy_side_files``) or a path ending in ``.safetensors`` (one file).
        method: ``"varm"`` (needs ``base``) or ``"linear"`` (both streamed here), or one of
            mergekit's ``"ties"``, ``"dare_ties"``, ``"dare_linear"``, ``"task_arithmetic"``
            (need ``base``) and ``"slerp"`` (two targets), run by
            :func:`fusekernels.pipeline.mergekit_merge.merge_with_mergekit` with ``weights``,
            ``density``, ``t``, ``normalize``, ``dtype`` and ``seed`` (model folders only).
        base: the common starting checkpoint (VaRM).
        weights: linear merge weights, one per target (normalised to sum 1); default uniform.
        temperature: VaRM softmax temperature; ``None`` = plain normalisation (published).
        max_shard_size: bytes per output shard (folder output only).
    The output must not exist (or be an empty folder) and must not be, contain or lie inside
    an input; it is written under a temporary name and renamed when complete.
    Floating tensors are combined in float32 and written in the first target's dtype; other
    tensors (integer buffers) must be identical in every target and are copied.
    """
    from .mergekit_merge import MERGEKIT_METHODS, merge_with_mergekit

    method = method.lower()
    if method in MERGEKIT_METHODS:
        if temperature is not None:
            raise ValueError("temperature= is only used by method='varm'")
        return merge_with_mergekit(targets, output, method=method, base=base, weights=weights, density=density,
                                   t=t, normalize=normalize, dtype=dtype, seed=seed, max_shard_size=max_shard_size)
    if method not in STREAMED_METHODS:
        raise ValueError(f"method must be one of {merge_methods()}, got {method!r}")
    if not targets:
        raise ValueError("targets must list at least one checkpoint")
    if method == "varm" and base is None:
        raise ValueError("method='varm' needs base= (the common starting model)")
    if method == "linear":
        linear = _linear_weights(weights, len(targets))
    elif weights is not None:
        raise ValueError("weights= is only used by method='linear'")
    if max_shard_size <= 0:
        raise ValueError(f"max_shard_size must be > 0, got {max_shard_size}")

    check_merge_output(output, [*targets, base])
    report = MergeReport(method=method)
    with contextlib.ExitStack() as stack:
        models = [stack.enter_context(SafetensorsCheckpoint(p)) for p in targets]
        base_model = stack.enter_context(SafetensorsCheckpoint(base)) if method == "varm" else None
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
            if method == "varm":
                reference = base_model.get(key).float()
                variations = [_mean_squared_change(t, reference) for t in tensors]
                del reference
                w = variation_weights(variations, temperature)
                report.variations[key] = variations
            else:
                w = linear
            merged = torch.zeros(first.shape, dtype=torch.float32)
            for weight, tensor in zip(w, tensors):
                merged.add_(tensor.float(), alpha=weight)
            del tensors
            report.weights[key] = list(w)
            report.num_parameters += merged.numel()
            writer.add(key, merged.to(first.dtype))
        written = writer.close()
        if copy_side_files and not _is_file_output(final):
            _copy_side_files(Path(targets[0]), staging)
    report.files = [str(final) if _is_file_output(final) else str(final / Path(f).name) for f in written]
    return report


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


def _mean_squared_change(tensor: torch.Tensor, reference: torch.Tensor) -> float:
    """mean((tensor - reference) ** 2) in float32 (torch's CPU sum is a cascaded, accurate one)."""
    if tensor.numel() == 0:
        return 0.0
    diff = tensor.float() - reference
    return float(diff.square_().sum()) / diff.numel()


def _linear_weights(weights, n: int) -> list[float]:
    if weights is None:
        return [1.0 / n] * n
    w = [float(x) for x in weights]
    if len(w) != n:
        raise ValueError(f"weights has {len(w)} entries for {n} targets")
    total = sum(w)
    if not all(torch.isfinite(torch.tensor(w))) or total == 0:
        raise ValueError(f"weights must be finite with a non-zero sum, got {w}")
    return [x / total for x in w]


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
