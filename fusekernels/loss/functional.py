"""Public functional API of the sparse top-k fusion loss (FuseLLM / FuseChat).

The fused target of each row is a mixture of the teachers' top-k distributions, each a softmax
over at most k (base-vocabulary id, logit) pairs; it is never expanded to the vocabulary.
"""
from __future__ import annotations

import numbers
from typing import NamedTuple, Optional

import torch

from .autograd import FusionLossFunction, RowOptions
from .inputs import broadcast_per_teacher, check_no_nan, flatten_inputs, flatten_mask
from .published import published_entropy, published_target, published_weights
from .registry import BACKENDS, FUSION_RULES, LOSS_TYPES, PRECISIONS, REDUCTIONS
from .weights import fusion_weights, soft_lam, unit_scales


class FusionLossOutput(NamedTuple):
    """loss = lam * clm_loss + (1 - lam) * fusion_loss; the two components are detached and
    reduced like the loss (0-d for "mean" / "sum", [...] per row for "none")."""

    loss: torch.Tensor
    clm_loss: torch.Tensor
    fusion_loss: torch.Tensor


def _check_options(fusion, loss_type, temperature, lam, reduction, backend, labels, precision="fp32"):
    PRECISIONS.check(precision)
    for name, value in (("temperature", temperature), ("lam", lam)):
        if isinstance(value, bool):  # bool is a numbers.Real: True would silently mean 1
            raise TypeError(f"{name} must be a number, got bool {value!r}")
    rule = FUSION_RULES.get_entry(fusion, "fusion")
    LOSS_TYPES.check(loss_type)
    REDUCTIONS.check(reduction)
    BACKENDS.check(backend)
    if not (isinstance(temperature, numbers.Real) and 0 < temperature < float("inf")):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if isinstance(lam, str):
        if lam != "soft":
            raise ValueError(f"lam must be a number in [0, 1] or 'soft', got {lam!r}")
        if rule.soft_reward is None:
            raise ValueError(f"lam='soft' takes lam from the teachers' rewards: it needs a fusion rule that defines "
                             f"one {FUSION_RULES.soft_names()}, got {fusion!r}")
        if labels is None:
            raise ValueError("labels is None, so there is no CLM term: lam='soft' needs labels")
        return
    if not (isinstance(lam, numbers.Real) and 0.0 <= lam <= 1.0):
        raise ValueError(f"lam must be a number in [0, 1] or 'soft', got {lam!r}")
    if labels is None and lam > 0:
        raise ValueError(f"labels is None, so lam must be 0 (no CLM term), got lam={lam}")


def fusion_loss(
    logits: torch.Tensor,
    labels: Optional[torch.Tensor],
    teacher_ids: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    teacher_counts: Optional[torch.Tensor] = None,
    teacher_ce: Optional[torch.Tensor] = None,
    teacher_weights: Optional[torch.Tensor] = None,
    fusion: str = "mince",
    loss_type: str = "kl",
    temperature: float = 1.0,
    lam: float = 0.9,
    ignore_index: int = -100,
    fusion_mask: Optional[torch.Tensor] = None,
    reduction: str = "mean",
    num_items_in_batch=None,
    num_fusion_items=None,
    inplace_backward: bool = False,
    backend: str = "auto",
    return_components: bool = False,
    precision: str = "fp32",
    base_teacher: bool = True,
):
    """Total loss ``lam * CLM + (1 - lam) * fusion`` of student logits against sparse teachers.

    Args:
        logits: [..., V] student logits (fp32 / bf16 / fp16; fp64 runs the torch path in fp64).
            Leading dims are flattened to N rows.
        labels: [...] int next-token label per row (already shifted); ``ignore_index`` rows have
            no CLM term. May be None when ``lam == 0``.
        teacher_ids: [..., T, k] int32/int64 base-vocabulary ids of each teacher's top-k.
        teacher_logits: [..., T, k] float teacher logits; -inf marks a padding entry.
        teacher_counts: [..., T] int, entries at index >= count are padding (alternative to -inf).
        teacher_ce: [..., T] float CE per row and teacher (or anything broadcasting to it, e.g.
            per sequence [B, 1, T]); needed by "mince" / "avgce".
        teacher_weights: [..., T] float >= 0 explicit weights for ``fusion="weights"``.
        fusion: "mince" (teacher with the smallest CE, ties -> first), "avgce" (softmax of the
            rewards exp(-ce), as published) or "weights". Teachers with no valid entry at a row
            are absent there; a row with no teacher present has no fusion term.
        loss_type: "kl" (sum q (log q - log p)) or "ce" (-sum q log p); same gradient.
        temperature: teacher temperature, targets are softmax(teacher_logits / temperature).
        lam: weight of the CLM term, in [0, 1], or "soft" (FuseLLM's per-sample schedule): each
            row's CLM term weighs ``1 - r`` and its fusion term ``r``, with r the best reward
            exp(-ce) of the teachers present there ("mince") or their mean reward ("avgce").
        fusion_mask: [...] bool/int rows where the fusion term counts (the published recipe uses
            the attention mask); default: rows whose label is not ignore_index.
        reduction: "mean" | "sum" | "none" (per-row [...] loss in float32, fp64 for fp64 logits).
        num_items_in_batch: int or one-element tensor, denominator of the CLM mean (Hugging Face
            gradient accumulation); also of the fusion mean when fusion_mask is None.
        num_fusion_items: denominator of the fusion mean (default: fusion_mask.sum()).
        inplace_backward: let the gradient overwrite the logits' storage (saves one [N, V]
            buffer; the logits' values are gone after the call).
        backend: "auto" (Triton for CUDA tensors when triton imports, else torch), "triton", "torch".
        return_components: return FusionLossOutput(loss, clm_loss, fusion_loss).
        precision: "fp32" (default: weights and targets in fp32) or "published": the weights,
            the soft lam and the targets are rounded exactly as the published trainer and
            collator round them (bf16 rewards and MinCE ties, bf16 AvgCE softmax, bf16
            targets; see :mod:`fusekernels.loss.published`). Needs "mince" or "avgce".
        base_teacher: teacher 0 is the base model's own distribution (only read by
            ``precision="published"``: without it, two teachers follow the published
            ``where(r0 > r1, d0, d1)``, which gives exact ties to the second).

    Returns:
        The loss (0-d, or [...] for "none"), or a FusionLossOutput. Only ``logits`` receives a
        gradient: teacher targets are constants.
    """
    _check_options(fusion, loss_type, temperature, lam, reduction, backend, labels, precision)
    flat = flatten_inputs(logits, labels, teacher_ids, teacher_logits, teacher_counts, ignore_index)
    n_teachers = flat.teacher_ids.shape[1]
    lead, device = flat.lead_shape, logits.device
    if logits.dtype == torch.float64:  # the kernels take fp32/bf16/fp16 only
        if backend == "triton":
            raise ValueError("logits of dtype float64 are only supported by backend='torch'")
        backend = "torch"
    work = flat.teacher_logits.dtype

    ce = broadcast_per_teacher("teacher_ce", teacher_ce, lead, n_teachers, device)
    explicit = broadcast_per_teacher("teacher_weights", teacher_weights, lead, n_teachers, device)
    check_no_nan("teacher_ce", ce)
    if ce is not None and bool((ce < 0).any()):
        raise ValueError("teacher_ce contains -inf or negative values (a cross-entropy is >= 0)")
    check_no_nan("teacher_weights", explicit)
    if explicit is not None and bool((explicit < 0).any() | torch.isinf(explicit).any()):
        raise ValueError("teacher_weights must be finite and >= 0")
    t_ids, t_logits, probs_given = flat.teacher_ids, flat.teacher_logits, False
    if precision == "published":
        if ce is None:
            raise ValueError(f"precision='published' with fusion={fusion!r} needs teacher_ce")
        weights = published_weights(fusion, flat.present, ce, base_teacher=bool(base_teacher))
        # the fused target, merged per id and rounded as published, enters as given probabilities
        t_ids, t_logits, row_weight = published_target(t_ids, t_logits, weights, float(temperature))
        t_logits, probs_given = t_logits.to(work), True
    else:
        weights = fusion_weights(fusion, flat.present, ce, explicit, dtype=work)
    if isinstance(lam, str):  # "soft": per-row weights of the two terms from the rewards
        clm_weight, fusion_weight = soft_lam(fusion, flat.present, ce, precision, dtype=work)
    else:
        clm_weight, fusion_weight = lam, 1.0 - lam
    if probs_given:
        weights = row_weight.to(work)

    clm_rows = flat.labels != ignore_index
    counted = (flatten_mask("fusion_mask", fusion_mask, lead, device) if fusion_mask is not None
               else clm_rows if labels is not None else torch.ones_like(clm_rows))
    fusion_rows = counted & (weights.sum(-1) > 0)
    clm_unit, fusion_unit = unit_scales(clm_rows, fusion_rows, counted, reduction, num_items_in_batch,
                                        num_fusion_items, fusion_mask is not None, dtype=work)

    compute_grad = torch.is_grad_enabled() and logits.requires_grad
    entropy = None
    if probs_given and loss_type == "kl":
        # The published kl_div adds xlogy(q, q) rounded to bf16 per entry: that constant (no
        # gradient) is added here; the backend computes the student-dependent "ce" part.
        entropy = published_entropy(t_logits, dtype=work)
        loss_type = "ce"
    options = RowOptions(
        temperature=float(temperature), loss_type=loss_type, ignore_index=int(ignore_index),
        grad_inplace=bool(inplace_backward) and compute_grad, backend=backend,
        reduce=reduction != "none", components=bool(return_components), compute_grad=compute_grad,
        probs_given=probs_given)
    loss, clm_part, fusion_part = FusionLossFunction.apply(
        flat.logits, flat.labels, t_ids.contiguous(), t_logits.contiguous(), weights.contiguous(),
        clm_weight * clm_unit, fusion_weight * fusion_unit, clm_unit, fusion_unit, options)
    if entropy is not None:
        extra = torch.where(entropy != 0, fusion_weight * fusion_unit * entropy, torch.zeros_like(entropy))
        loss = loss + (extra.sum() if reduction != "none" else extra.to(loss.dtype))
        if return_components:
            extra = torch.where(entropy != 0, fusion_unit * entropy, torch.zeros_like(entropy))
            fusion_part = fusion_part + (extra.sum() if reduction != "none" else extra.to(fusion_part.dtype))
    if reduction == "none":
        loss = loss.reshape(lead)
        if return_components:
            clm_part, fusion_part = clm_part.reshape(lead), fusion_part.reshape(lead)
    if return_components:
        return FusionLossOutput(loss, clm_part.detach(), fusion_part.detach())
    return loss
