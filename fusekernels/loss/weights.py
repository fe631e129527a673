"""Per-row fusion weights over teachers (the built-in fusion rules) and per-row loss scales.

Fusion weights [N, T] are 0 for teachers absent at a row (no valid entry there) and sum to 1 over
the present ones, or to 0 where no teacher is present (that row has no fusion term).
"""
from __future__ import annotations

import torch


def mince_weights(present: torch.Tensor, teacher_ce, teacher_weights=None, dtype=torch.float32) -> torch.Tensor:
    """MinCE: one-hot [N, T] on the present teacher with the largest reward exp(-ce), i.e. the
    smallest CE. As in the published code the comparison is on the fp32 rewards and ties go to the
    first teacher (argmax), so two CEs that round to the same reward tie."""
    reward = torch.exp(-teacher_ce.float())
    # Rewards are >= 0, so -1 keeps absent teachers from winning over a present one.
    best = torch.where(present, reward, torch.full_like(reward, -1.0)).argmax(dim=-1)
    onehot = torch.nn.functional.one_hot(best, present.shape[-1]).to(torch.bool)
    return (onehot & present).to(dtype)


def avgce_weights(present: torch.Tensor, teacher_ce, teacher_weights=None, dtype=torch.float32) -> torch.Tensor:
    """AvgCE: softmax [N, T] of the rewards exp(-ce) themselves over the present teachers (as
    published; rewards lie in [0, 1], so these weights are never far from uniform)."""
    reward = torch.exp(-teacher_ce.float())
    scores = torch.where(present, reward, torch.full_like(reward, float("-inf")))
    soft = torch.softmax(scores, dim=-1)
    return torch.where(present.any(-1, keepdim=True), soft, torch.zeros_like(soft)).to(dtype)


def given_weights(present: torch.Tensor, teacher_ce=None, teacher_weights=None, dtype=torch.float32) -> torch.Tensor:
    """The caller's ``teacher_weights`` [N, T], renormalised over the present teachers."""
    w = torch.where(present, teacher_weights.to(dtype), torch.zeros((), dtype=dtype, device=present.device))
    total = w.sum(-1, keepdim=True)
    return torch.where(total > 0, w / torch.where(total > 0, total, torch.ones_like(total)), torch.zeros_like(w))


def max_reward(present: torch.Tensor, reward: torch.Tensor) -> torch.Tensor:
    """[N] best reward of the present teachers (``reward`` is 0 where absent): MinCE's soft lam."""
    return reward.amax(-1)


def mean_reward(present: torch.Tensor, reward: torch.Tensor) -> torch.Tensor:
    """[N] mean reward of the present teachers: AvgCE's soft lam."""
    return reward.sum(-1) / present.sum(-1).clamp_min(1).to(reward.dtype)


def _denominator(value, fallback: torch.Tensor, name: str, dtype) -> torch.Tensor:
    """Count used by "mean": an explicit int / 0-d tensor, else the fallback count."""
    if value is None:
        return fallback.to(dtype)
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be an int or a one-element tensor, got shape {tuple(value.shape)}")
        count = value.reshape(()).to(device=fallback.device, dtype=dtype)
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be an int or a 0-d tensor, got {type(value).__name__}")
    else:
        count = torch.tensor(float(value), dtype=dtype, device=fallback.device)
    # One host sync on a scalar: a NaN, negative or zero count (with items to count) would turn
    # the loss into NaN or silently into 0.
    bad = ~torch.isfinite(count) | (count < 0) | ((count == 0) & (fallback > 0))
    if bool(bad):
        raise ValueError(f"{name} must be a finite count >= 1 when this batch has items to average "
                         f"(it has {int(fallback)}), got {float(count)}")
    return count


def _safe_inverse(count: torch.Tensor) -> torch.Tensor:
    # No items -> the term is 0 (not NaN as a 0/0 mean would be).
    return torch.where(count > 0, 1.0 / torch.where(count > 0, count, torch.ones_like(count)),
                       torch.zeros_like(count))


def unit_scales(clm_rows: torch.Tensor, fusion_rows: torch.Tensor, fusion_counted: torch.Tensor,
                reduction: str, num_items_in_batch=None, num_fusion_items=None,
                fusion_mask_given: bool = False, dtype=torch.float32):
    """Per-row weights [N] of the unscaled CLM and fusion terms for a reduction.

    clm_rows [N] bool: rows with a CLM term; fusion_rows [N] bool: rows with a fusion term;
    fusion_counted [N] bool: rows counted by the fusion mean (the fusion mask, whether or not a
    teacher is present there). "mean" divides the CLM term by num_items_in_batch (default: the
    number of label rows) and the fusion term by num_fusion_items, else by num_items_in_batch when
    no fusion_mask was given (both terms then count the same label rows), else by the fusion
    mask's row count. ``reduction`` is one of :data:`fusekernels.loss.registry.REDUCTIONS` (checked
    by the callers).
    """
    clm_unit, fusion_unit = clm_rows.to(dtype), fusion_rows.to(dtype)
    if reduction != "mean":
        return clm_unit, fusion_unit
    n_clm = _denominator(num_items_in_batch, clm_rows.sum(), "num_items_in_batch", dtype)
    if num_fusion_items is not None:
        n_fus = _denominator(num_fusion_items, fusion_counted.sum(), "num_fusion_items", dtype)
    elif not fusion_mask_given and num_items_in_batch is not None:
        n_fus = n_clm
    else:
        n_fus = fusion_counted.sum().to(dtype)
    return clm_unit * _safe_inverse(n_clm), fusion_unit * _safe_inverse(n_fus)
