"""The loss's extension points: fusion rules, loss types, backends, precisions, reductions.

:func:`fusekernels.loss.fusion_loss`, ``FusionArguments``, the trainer, the command line's
``choices`` and the docs read these registries. A new fusion rule is one weights function and one
registration::

    import torch
    from fusekernels.loss.registry import FUSION_RULES, FusionRule

    def uniform(present, teacher_ce, teacher_weights, dtype):   # [N, T] bool -> [N, T] weights
        w = present.to(dtype)
        return w / w.sum(-1, keepdim=True).clamp_min(1)

    FUSION_RULES.register(FusionRule("uniform", uniform, needs=(), help="equal weights"))
    # fusion_loss(..., fusion="uniform"), FusionArguments(fusion="uniform"), --fusion uniform
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from ..registry import Registry, simple_registry
from . import published, weights


@dataclass(frozen=True)
class FusionRule:
    """How the teachers present at a row are weighted.

    ``weights(present [N, T] bool, teacher_ce [N, T] | None, teacher_weights [N, T] | None,
    dtype) -> [N, T]``: 0 for absent teachers, summing to 1 over the present ones (0 on rows
    without one). ``needs``: the inputs it reads (``"teacher_ce"``, ``"teacher_weights"``).
    ``soft_reward(present, reward [N, T]) -> [N]``: the reward r that sets a row's lam under
    ``lam="soft"`` (None: the rule does not support it). ``published_weights(present,
    teacher_ce, base_teacher)`` and ``published_soft_reward(present, teacher_ce)``: the same,
    rounded as the published code rounds them (None: no published counterpart).
    """

    name: str
    weights: Callable
    needs: tuple = ("teacher_ce",)
    soft_reward: Optional[Callable] = None
    published_weights: Optional[Callable] = None
    published_soft_reward: Optional[Callable] = None
    help: str = ""

    def check_inputs(self, teacher_ce, teacher_weights) -> None:
        if "teacher_ce" in self.needs and teacher_ce is None:
            raise ValueError(f"fusion={self.name!r} needs teacher_ce ([..., T] CE per row and teacher)")
        if "teacher_weights" in self.needs and teacher_weights is None:
            raise ValueError(f"fusion={self.name!r} needs teacher_weights ([..., T] fusion weights)")


class FusionRules(Registry[FusionRule]):
    def published_names(self) -> tuple[str, ...]:
        return tuple(n for n, r in self.items() if r.published_weights is not None)

    def soft_names(self) -> tuple[str, ...]:
        return tuple(n for n, r in self.items() if r.soft_reward is not None)


FUSION_RULES = FusionRules("fusion")
FUSION_RULES.register(FusionRule(
    "mince", weights.mince_weights, soft_reward=weights.max_reward,
    published_weights=published.published_mince_weights, published_soft_reward=published.published_max_reward,
    help="the teacher with the smallest CE (ties -> first); per token when teacher_ce is per token"))
FUSION_RULES.register(FusionRule(
    "avgce", weights.avgce_weights, soft_reward=weights.mean_reward,
    published_weights=published.published_avgce_weights, published_soft_reward=published.published_mean_reward,
    help="softmax of the rewards exp(-ce) over the teachers (as published)"))
FUSION_RULES.register(FusionRule(
    "weights", weights.given_weights, needs=("teacher_weights",),
    help="explicit teacher_weights, renormalised over the teachers present"))


@dataclass(frozen=True)
class LossType:
    """A fusion term. ``kernel``: what the backends compute on the fused top-k target ("kl" or
    "ce"), or None for a term computed from aligned-chunk likelihoods (``needs_chunks``)."""

    name: str
    kernel: Optional[str]
    needs_topk: bool = True
    needs_chunks: bool = False
    help: str = ""


LOSS_TYPES: Registry[LossType] = Registry("loss_type")
LOSS_TYPES.register(LossType("kl", "kl", help="sum q (log q - log p) against the fused top-k target"))
LOSS_TYPES.register(LossType("ce", "ce", help="-sum q log p (same gradient as kl)"))
LOSS_TYPES.register(LossType("alm", None, needs_topk=False, needs_chunks=True,
                             help="approximate likelihood matching of aligned text chunks (no vocabulary map)"))

BACKENDS = simple_registry("backend", {
    "auto": "Triton for CUDA tensors when triton imports, torch otherwise",
    "triton": "the Triton kernels (CUDA; on CPU only under TRITON_INTERPRET=1)",
    "torch": "the chunked torch path (any device)"})
PRECISIONS = simple_registry("precision", {
    "fp32": "weights and targets in fp32",
    "published": "weights, soft lam and targets rounded as the published code (bf16 / fp16)"})
REDUCTIONS = simple_registry("reduction", {
    "mean": "divided by the counted rows (or num_items_in_batch)", "sum": "summed", "none": "per row"})
