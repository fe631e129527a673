"""Public functional API of the sparse top-k fusion loss (FuseLLM / FuseChat).

The fused target of each row is a mixture of the teachers' top-k distributions, each a softmax
over at most k (base-vocabulary id, logit) pairs; it is never expanded to the vocabulary.
"""
from __future__ import annotations

import numbers
from typing import NamedTuple, Optional

import torch

from .alm import check_chunks, chunk_terms, spread_to_rows
from .autograd import FusionLossFunction, RowOptions
from .backend import fusion_loss_rows
from .inputs import broadcast_per_teacher, check_no_nan, flatten_inputs, flatten_mask
from .published import published_entropy, published_target
from .registry import BACKENDS, FUSION_RULES, LOSS_TYPES, PRECISIONS, REDUCTIONS
from .rules import fusion_weights, published_weights, soft_lam
from .weights import unit_scales


class AlmRows(NamedTuple):
    """Per-row pieces of the ``loss_type="alm"`` term, each [N]: ``coef`` is added to the row's
    CLM scale (the backend then computes the term's gradient), ``const`` corrects the value:
    the scaled chunk terms ending at the row minus ``coef * clm`` of the row; ``component`` the
    chunk terms with the unit scale only (the logged fusion component)."""

    coef: torch.Tensor
    const: torch.Tensor
    component: torch.Tensor


def alm_rows(row_logprob, span, chunk_logprob, row_ok, lead_shape, temperature, weights, fusion_scale,
             fusion_unit) -> AlmRows:
    """``AlmRows`` from each row's log-likelihood of its label [N] (any value on rows
    without one), the chunks ([N, T] from :func:`fusekernels.loss.alm.check_chunks`), the fusion
    weights [N, T] and the fusion term's per-row scale / unit scale [N] (a chunk takes those of
    its last row)."""
    terms = chunk_terms(row_logprob, span, chunk_logprob, row_ok, lead_shape, temperature)
    scaled = weights * fusion_scale[:, None]
    coef = spread_to_rows(-scaled * terms.slope, terms.ends, terms.covers)
    value = (scaled * terms.value).sum(-1)
    # the backend adds coef * clm = -coef * row_logprob to the row's loss: take it back out
    const = value + coef * torch.where(row_ok, row_logprob, torch.zeros_like(row_logprob))
    component = (weights * fusion_unit[:, None] * terms.value).sum(-1)
    return AlmRows(coef, const, component)


def alm_plan(row_logprob, labels, span, chunk_logprob, *, lead_shape, teacher_ce=None, teacher_weights=None,
             fusion="mince", lam=0.9, ignore_index=-100, fusion_mask=None, reduction="mean", num_items_in_batch=None,
             num_fusion_items=None, alm_temperature=1.0):
    """The ``loss_type="alm"`` terms of a whole batch, for callers that run the loss on row chunks
    (:func:`fusekernels.loss.fused_linear.fused_linear_fusion_loss`): returns ``(AlmRows,
    covers [N, T] bool)``, to be passed as ``_alm_rows`` (sliced to the chunk's rows).

    row_logprob [N] float: each row's log-likelihood of its label (N = prod(lead_shape)); labels,
    fusion_mask (or None) [...]; span, chunk_logprob, teacher_ce, teacher_weights [..., T] as
    :func:`fusion_loss` takes them (validated here); the other options as :func:`fusion_loss`.
    """
    n = row_logprob.shape[0]
    work, device = row_logprob.dtype, row_logprob.device
    n_teachers = span.shape[-1]
    span, chunk_logprob = check_chunks(span, chunk_logprob, tuple(lead_shape), n_teachers, device)
    teacher_ce = broadcast_per_teacher("teacher_ce", teacher_ce, lead_shape, n_teachers, device)
    teacher_weights = broadcast_per_teacher("teacher_weights", teacher_weights, lead_shape, n_teachers, device)
    clm_rows = labels.reshape(n) != ignore_index
    covers = chunk_terms(torch.zeros_like(row_logprob), span, chunk_logprob, clm_rows, lead_shape,
                         float(alm_temperature)).covers
    weights = fusion_weights(fusion, covers, teacher_ce, teacher_weights, dtype=work)
    fusion_weight = soft_lam(fusion, covers, teacher_ce, "fp32", dtype=work)[1] if isinstance(lam, str) else 1.0 - lam
    counted = fusion_mask.reshape(n) != 0 if fusion_mask is not None else clm_rows
    fusion_rows = counted & (weights.sum(-1) > 0)
    _, fusion_unit = unit_scales(clm_rows, fusion_rows, counted, reduction, num_items_in_batch, num_fusion_items,
                                 fusion_mask is not None, dtype=work)
    rows = alm_rows(row_logprob, span, chunk_logprob, clm_rows, lead_shape, float(alm_temperature), weights,
                    fusion_weight * fusion_unit, fusion_unit)
    return rows, covers


def _chunk_placeholders(logits, span):
    """Top-k inputs of width 1 with no entry (``loss_type="alm"`` reads chunks, not top-k)."""
    if not isinstance(span, torch.Tensor) or span.dim() < 1:
        raise ValueError("loss_type='alm' needs teacher_chunk_span ([..., T] per row and teacher; see "
                         "fusekernels.tokenization.chunks)")
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    shape = (*logits.shape[:-1], span.shape[-1], 1)
    ids = torch.zeros(shape, dtype=torch.int32, device=logits.device)
    return ids, torch.full(shape, float("-inf"), dtype=torch.float32, device=logits.device), None


def _check_alm_options(labels, precision, alm_temperature):
    if labels is None:
        raise ValueError("loss_type='alm' compares the student's likelihood of the labels: labels are needed")
    if precision != "fp32":
        raise ValueError("loss_type='alm' is not part of the published recipe: use precision='fp32'")
    if isinstance(alm_temperature, bool) or not (isinstance(alm_temperature, numbers.Real)
                                                 and 0 < alm_temperature < float("inf")):
        raise ValueError(f"alm_temperature must be a finite number > 0, got {alm_temperature!r}")


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
    teacher_chunk_span: Optional[torch.Tensor] = None,
    teacher_chunk_logprob: Optional[torch.Tensor] = None,
    alm_temperature: float = 1.0,
    _alm_rows: Optional[tuple] = None,
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
        loss_type: "kl" (sum q (log q - log p)) or "ce" (-sum q log p), same gradient, against the
            fused top-k target; or "alm": approximate likelihood matching of aligned text chunks
            (:mod:`fusekernels.loss.alm`), which reads ``teacher_chunk_span`` /
            ``teacher_chunk_logprob`` instead of the top-k (``teacher_ids`` / ``teacher_logits``
            may then be None) and needs no vocabulary map.
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
        teacher_chunk_span: [..., T] int, ``loss_type="alm"``: at the last row of an aligned chunk
            (the rows predicting its student tokens), the chunk's number of rows; 0 elsewhere.
            Chunks must lie within one sequence (the last leading dim) and on labelled rows;
            others are ignored. Teacher t is present at the rows its valid chunks cover, and each
            chunk is weighted by the fusion rule at its last row.
        teacher_chunk_logprob: [..., T] float <= 0, ``loss_type="alm"``: the teacher's
            log-likelihood of that chunk's text.
        alm_temperature: the temperature tau of the chunk likelihoods (``loss_type="alm"``).
        _alm_rows: internal, for chunked callers: ``(AlmRows, covers [N, T] bool)`` computed on
            the whole batch (``alm_plan`` in this module), for these rows.

    Returns:
        The loss (0-d, or [...] for "none"), or a FusionLossOutput. Only ``logits`` receives a
        gradient: teacher targets are constants.
    """
    _check_options(fusion, loss_type, temperature, lam, reduction, backend, labels, precision)
    chunked = LOSS_TYPES[loss_type].needs_chunks
    if chunked:
        teacher_ids, teacher_logits, teacher_counts = _chunk_placeholders(logits, teacher_chunk_span)
        _check_alm_options(labels, precision, alm_temperature)
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
    clm_rows = flat.labels != ignore_index
    present, alm = flat.present, None
    if chunked:
        if _alm_rows is None:
            # pass 1 (no gradient): each row's log-likelihood of its label
            row_lp = -fusion_loss_rows(flat.logits, flat.labels, flat.teacher_ids, flat.teacher_logits,
                                       torch.zeros(flat.present.shape, dtype=work, device=device), clm_rows.to(work),
                                       torch.zeros_like(clm_rows, dtype=work), temperature=1.0, loss_type="ce",
                                       ignore_index=int(ignore_index), compute_grad=False, grad_inplace=False,
                                       backend=backend)[0].to(work)
            _alm_rows = alm_plan(row_lp, flat.labels, teacher_chunk_span, teacher_chunk_logprob, lead_shape=lead,
                                 teacher_ce=teacher_ce, teacher_weights=teacher_weights, fusion=fusion, lam=lam,
                                 ignore_index=ignore_index,
                                 fusion_mask=(flatten_mask("fusion_mask", fusion_mask, lead, device)
                                              if fusion_mask is not None else None),
                                 reduction=reduction, num_items_in_batch=num_items_in_batch,
                                 num_fusion_items=num_fusion_items, alm_temperature=alm_temperature)
        rows, present = _alm_rows  # the teachers are present where their valid chunks cover a row
        alm = AlmRows(*(x.to(device=device, dtype=work) for x in rows))
    t_ids, t_logits, probs_given = flat.teacher_ids, flat.teacher_logits, False
    if precision == "published":
        if ce is None:
            raise ValueError(f"precision='published' with fusion={fusion!r} needs teacher_ce")
        weights = published_weights(fusion, present, ce, base_teacher=bool(base_teacher))
        # the fused target, merged per id and rounded as published, enters as given probabilities
        t_ids, t_logits, row_weight = published_target(t_ids, t_logits, weights, float(temperature))
        t_logits, probs_given = t_logits.to(work), True
    else:
        weights = fusion_weights(fusion, present, ce, explicit, dtype=work)
    if isinstance(lam, str):  # "soft": per-row weights of the two terms from the rewards
        clm_weight, fusion_weight = soft_lam(fusion, present, ce, precision, dtype=work)
    else:
        clm_weight, fusion_weight = lam, 1.0 - lam
    if probs_given:
        weights = row_weight.to(work)

    counted = (flatten_mask("fusion_mask", fusion_mask, lead, device) if fusion_mask is not None
               else clm_rows if labels is not None else torch.ones_like(clm_rows))
    fusion_rows = counted & (weights.sum(-1) > 0)
    clm_unit, fusion_unit = unit_scales(clm_rows, fusion_rows, counted, reduction, num_items_in_batch,
                                        num_fusion_items, fusion_mask is not None, dtype=work)
    clm_scale, fusion_scale = clm_weight * clm_unit, fusion_weight * fusion_unit

    compute_grad = torch.is_grad_enabled() and logits.requires_grad
    if alm is not None:
        # the chunk terms' gradient has the CLM's shape: raise every row's CLM scale by its coefficient
        clm_scale, fusion_scale = clm_scale + alm.coef, torch.zeros_like(fusion_scale)
        weights = torch.zeros_like(weights)
    entropy = None
    if probs_given and loss_type == "kl":
        # The published kl_div adds xlogy(q, q) rounded to bf16 per entry: that constant (no
        # gradient) is added here; the backend computes the student-dependent "ce" part.
        entropy = published_entropy(t_logits, dtype=work)
        loss_type = "ce"
    options = RowOptions(
        temperature=float(temperature), loss_type=LOSS_TYPES[loss_type].kernel or "ce", ignore_index=int(ignore_index),
        grad_inplace=bool(inplace_backward) and compute_grad, backend=backend,
        reduce=reduction != "none", components=bool(return_components), compute_grad=compute_grad,
        probs_given=probs_given)
    loss, clm_part, fusion_part = FusionLossFunction.apply(
        flat.logits, flat.labels, t_ids.contiguous(), t_logits.contiguous(), weights.contiguous(),
        clm_scale, fusion_scale, clm_unit, fusion_unit, options)
    if alm is not None:
        loss = loss + (alm.const.sum() if reduction != "none" else alm.const.to(loss.dtype))
        if return_components:
            fusion_part = alm.component.sum() if reduction != "none" else alm.component
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
