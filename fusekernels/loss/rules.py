"""The registered fusion rules applied: fusion weights and the soft-lam split of a batch's rows.

These look the rule up in :data:`fusekernels.loss.registry.FUSION_RULES` (which holds the rule
functions of ``fusekernels.loss.weights`` and :mod:`fusekernels.loss.published`).
"""
from __future__ import annotations

import torch

from .registry import FUSION_RULES


def fusion_weights(fusion: str, present: torch.Tensor, teacher_ce=None, teacher_weights=None,
                   dtype=torch.float32) -> torch.Tensor:
    """Fusion weights [N, T] in ``dtype`` of the registered rule ``fusion``
    (:data:`fusekernels.loss.registry.FUSION_RULES`: "mince", "avgce", "weights", ...).

    present [N, T] bool; teacher_ce [N, T] float (rules that read CE); teacher_weights [N, T]
    float >= 0 (rules that read explicit weights).
    """
    rule = FUSION_RULES.get_entry(fusion, "fusion")
    rule.check_inputs(teacher_ce, teacher_weights)
    return rule.weights(present, teacher_ce, teacher_weights, dtype)


def soft_lam(fusion: str, present: torch.Tensor, teacher_ce, precision: str = "fp32", dtype=torch.float32):
    """Per-row weights ([N], [N]) of the CLM and fusion terms under FuseLLM's "soft" schedule.

    The fusion term weighs r and the CLM term 1 - r, where r is the rule's reward of the
    teachers present at the row: the largest exp(-ce) for "mince", their mean for "avgce", as in
    the published trainer (which computes it per sample, with batches of one). Rows without a
    teacher weigh the CLM term 1. ``precision="published"``: rewards and ``1 - r`` in bf16.
    """
    if teacher_ce is None:
        raise ValueError("lam='soft' needs teacher_ce (the rewards exp(-ce) set each row's lam)")
    if precision == "published":
        clm, best = published_soft_lam(fusion, present, teacher_ce)
        return clm.to(dtype), best.to(dtype)
    rule = FUSION_RULES.get_entry(fusion, "fusion")
    if rule.soft_reward is None:
        raise ValueError(f"lam='soft' takes lam from the teachers' rewards: fusion {fusion!r} defines none "
                         f"(rules with one: {FUSION_RULES.soft_names()})")
    reward = torch.where(present, torch.exp(-teacher_ce.to(dtype)), torch.zeros((), dtype=dtype, device=present.device))
    best = rule.soft_reward(present, reward)
    return 1.0 - best, best


def published_weights(fusion: str, present: torch.Tensor, teacher_ce: torch.Tensor,
                      base_teacher: bool = True) -> torch.Tensor:
    """Fusion weights [N, T] float32 (exact bf16 values) of the published trainer for the rule
    ``fusion`` (one with a published counterpart in :data:`fusekernels.loss.registry.FUSION_RULES`:
    "mince", "avgce")."""
    rule = FUSION_RULES.get_entry(fusion, "fusion")
    if rule.published_weights is None:
        raise ValueError(f"precision='published' supports the published fusion rules "
                         f"{FUSION_RULES.published_names()}, got {fusion!r}")
    return rule.published_weights(present, teacher_ce, base_teacher)


def published_soft_lam(fusion: str, present: torch.Tensor, teacher_ce: torch.Tensor):
    """Per-row (CLM weight, fusion weight), each [N] float32, of the published "soft" schedule:
    ``(1 - r, r)`` with r the rule's bf16 reward (MinCE: the max, AvgCE: the mean), and ``1 - r``
    in bf16 (the published ``(1.0 - max_reward) * loss + max_reward * loss_lm``).
    Rows without a teacher: (1, 0)."""
    rule = FUSION_RULES.get_entry(fusion, "fusion")
    if rule.published_soft_reward is None:
        raise ValueError(f"lam='soft' with precision='published' needs a published fusion rule "
                         f"{FUSION_RULES.published_names()}, got {fusion!r}")
    best = rule.published_soft_reward(present, teacher_ce)
    return (1.0 - best).float().to(present.device), best.float().to(present.device)
