"""The one registry of merge methods.

:func:`fusekernels.pipeline.merge.merge_models`, the CLI's ``merge --method`` and
``fusechat --merge`` choices, the FuseChat recipe and the docs all read it, so a new method is
one function plus one :func:`register_merge_method` call. There are two kinds:

- **per tensor** (VaRM, linear): ``function(name, tensors, base, **options)`` is called once per
  floating tensor name with that tensor of every target (a list of CPU tensors in the stored
  dtype) and of the base model (or None). ``merge_models`` streams the checkpoints, so memory
  stays bounded by the largest tensor. The function returns

  * the per-target weights (a sequence of floats, any scale): the merged tensor is
    ``sum_m w[m] * x[m] / sum_m w[m]``, computed in float64 and rounded once to the checkpoint
    dtype (bf16 / fp16 merges are correctly rounded);
  * a :class:`TensorMerge` (the weights plus the variations to report), or
  * the merged tensor itself (any floating dtype; cast once to the checkpoint dtype).

- **whole model** (mergekit's TIES, DARE, task arithmetic, SLERP):
  ``function(targets, output, *, base, max_shard_size, **options)`` writes the merged model
  into the empty folder ``output`` and returns the per-target weights to report, or None.

The registry itself is ``MERGE_METHODS``, a ``fusekernels.registry.Registry`` like the loss's.
``options`` lists the keyword options of ``merge_models`` a method takes; any other option
given to ``merge_models`` is refused naming it. ``validate(targets, base, **options)`` (optional) checks
them before any output is created. This module imports nothing heavy: the CLI reads the names
while building its parser.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..registry import Registry

BASE_POLICIES = ("required", "optional", "unused")


@dataclass
class MergeReport:
    """What a merge did: per-tensor weights (one per target model, summing to 1), the per-tensor
    variations of VaRM, the files written and the number of merged parameters."""
    method: str
    weights: dict[str, list[float]] = field(default_factory=dict)
    variations: dict[str, list[float]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    num_parameters: int = 0


@dataclass
class TensorMerge:
    """Result of a per-tensor method: ``weights`` (one per target, any scale; normalised by their
    sum) and optionally the ``variations`` to record in the report."""
    weights: Sequence[float]
    variations: Sequence[float] | None = None


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge method (see the module docstring for the two function contracts).

    base: "required" (the common starting model), "optional" or "unused" (``base=`` refused).
    min_targets / max_targets: how many target checkpoints it merges (None = no upper bound).
    options: keyword options of ``merge_models`` it takes (e.g. "weights", "t").
    whole_model: the function writes the whole model (mergekit) instead of one tensor at a time.
    validate: ``validate(targets, base, **options)`` raising ValueError before any work.
    summary: one line for ``--help`` and the docs.
    """
    name: str
    function: Callable
    base: str = "unused"
    min_targets: int = 1
    max_targets: int | None = None
    options: tuple[str, ...] = ()
    whole_model: bool = False
    validate: Callable | None = None
    summary: str = ""

    def __post_init__(self):
        if not self.name or self.name != self.name.lower() or not self.name.replace("_", "").isalnum():
            raise ValueError(f"merge method name must be lower-case letters, digits and '_', got {self.name!r}")
        if not callable(self.function):
            raise TypeError(f"merge method {self.name!r}: function must be callable")
        if self.base not in BASE_POLICIES:
            raise ValueError(f"merge method {self.name!r}: base must be one of {BASE_POLICIES}, got {self.base!r}")
        if self.min_targets < 1 or (self.max_targets is not None and self.max_targets < self.min_targets):
            raise ValueError(f"merge method {self.name!r}: bad target counts {self.min_targets}..{self.max_targets}")
        object.__setattr__(self, "options", tuple(self.options))

    def check(self, num_targets: int, base, options: dict) -> None:
        """Refuse, naming the argument, what this method cannot do: an option it does not take,
        a missing or unused base, a number of targets outside its range."""
        for key in options:
            if key not in self.options:
                takes = ", ".join(f"{o}=" for o in self.options) or "no options"
                raise ValueError(f"{key}= is not used by method={self.name!r} (it takes {takes})")
        if self.base == "required" and base is None:
            raise ValueError(f"method={self.name!r} needs base= (the common starting model)")
        if self.base == "unused" and base is not None:
            raise ValueError(f"method={self.name!r} does not use base=; leave it out")
        if num_targets < self.min_targets:
            raise ValueError(f"method={self.name!r} needs at least {self.min_targets} target(s), got {num_targets}")
        if self.max_targets is not None and num_targets > self.max_targets:
            if self.min_targets == self.max_targets:
                raise ValueError(f"method={self.name!r} merges exactly {self.max_targets} targets, got {num_targets}")
            raise ValueError(f"method={self.name!r} merges at most {self.max_targets} targets, got {num_targets}")


MERGE_METHODS: Registry[MergeMethod] = Registry("method")


def register_merge_method(name: str, function: Callable | None = None, *, replace: bool = False, **spec):
    """Register ``function`` as merge method ``name`` in :data:`MERGE_METHODS` (keywords: the
    :class:`MergeMethod` fields).

    Usable directly, ``register_merge_method("mean", mean_fn)``, or as a decorator,
    ``@register_merge_method("mean")``. A name already registered is refused unless ``replace``.
    Returns the function (so the decorator leaves it unchanged).
    """
    def add(fn):
        MERGE_METHODS.register(MergeMethod(name=name, function=fn, **spec), replace=replace)
        return fn

    return add if function is None else add(function)


def unregister_merge_method(name: str) -> None:
    """Remove a registered method (ValueError listing the choices when absent)."""
    MERGE_METHODS.unregister(name)


def get_merge_method(name: str) -> MergeMethod:
    """The registered method ``name`` (case-insensitive); ValueError listing the choices otherwise."""
    return MERGE_METHODS.get_entry(name.lower() if isinstance(name, str) else name, "method")


def merge_method_names() -> tuple[str, ...]:
    """Names of the registered methods, in registration order."""
    return MERGE_METHODS.names()


def merge_methods() -> tuple[MergeMethod, ...]:
    """The registered methods, in registration order."""
    return tuple(MERGE_METHODS.values())
