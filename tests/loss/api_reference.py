"""Float64 loop-based reference of the public ``fusion_loss`` API and random test cases.

Fusion weights, padding, masks and denominators are recomputed here row by row in plain Python,
independently of fusekernels.loss; the per-row loss itself comes from tests/reference/dense_fusion.
"""
from __future__ import annotations

import math

import torch

from tests.reference.dense_fusion import dense_fusion_rows


def _row_weights(fusion, valid_row, ce_row, weight_row):
    """valid_row [T, k] bool, ce_row / weight_row [T] -> list of T float weights."""
    n_teachers = valid_row.shape[0]
    present = [t for t in range(n_teachers) if bool(valid_row[t].any())]
    weights = [0.0] * n_teachers
    if not present:
        return weights
    if fusion == "mince":
        best = min(present, key=lambda t: (float(ce_row[t]), t))
        weights[best] = 1.0
    elif fusion == "avgce":
        rewards = {t: math.exp(-float(ce_row[t])) for t in present}
        total = sum(math.exp(r) for r in rewards.values())
        for t in present:
            weights[t] = math.exp(rewards[t]) / total
    else:
        total = sum(float(weight_row[t]) for t in present)
        if total > 0:
            for t in present:
                weights[t] = float(weight_row[t]) / total
    return weights


def reference_fusion_loss(logits, labels, teacher_ids, teacher_logits, *, teacher_counts=None,
                          teacher_ce=None, teacher_weights=None, fusion="mince", loss_type="kl",
                          temperature=1.0, lam=0.9, ignore_index=-100, fusion_mask=None,
                          reduction="mean", num_items_in_batch=None, num_fusion_items=None):
    """Same arguments as fusion_loss (no backend options); float64, differentiable in logits."""
    vocab = logits.shape[-1]
    lead = logits.shape[:-1]
    z = logits.double().reshape(-1, vocab)
    n = z.shape[0]
    n_teachers, k = teacher_ids.shape[-2:]
    ids = teacher_ids.reshape(n, n_teachers, k).long()
    tl = teacher_logits.double().reshape(n, n_teachers, k).clone()
    if teacher_counts is not None:
        counts = teacher_counts.reshape(n, n_teachers)
        for row in range(n):
            for t in range(n_teachers):
                tl[row, t, int(counts[row, t]):] = float("-inf")
    valid = torch.isfinite(tl)
    ids = torch.where(valid, ids, torch.zeros_like(ids))
    ce = None if teacher_ce is None else torch.broadcast_to(teacher_ce, (*lead, n_teachers)).reshape(n, n_teachers)
    given = (None if teacher_weights is None
             else torch.broadcast_to(teacher_weights, (*lead, n_teachers)).reshape(n, n_teachers))
    weights = torch.tensor([_row_weights(fusion, valid[row], None if ce is None else ce[row],
                                         None if given is None else given[row]) for row in range(n)],
                           dtype=torch.float64).reshape(n, n_teachers)

    flat_labels = (torch.full((n,), ignore_index, dtype=torch.long) if labels is None
                   else labels.reshape(n).long())
    clm_rows = (flat_labels != ignore_index).double()
    if fusion_mask is not None:
        counted = (fusion_mask.reshape(n) != 0).double()
    elif labels is not None:
        counted = clm_rows.clone()
    else:
        counted = torch.ones(n, dtype=torch.float64)
    fusion_rows = counted * (weights.sum(-1) > 0).double()
    clm_unit, fusion_unit = clm_rows, fusion_rows
    if reduction == "mean":
        n_clm = float(num_items_in_batch) if num_items_in_batch is not None else float(clm_rows.sum())
        if num_fusion_items is not None:
            n_fus = float(num_fusion_items)
        elif fusion_mask is None and num_items_in_batch is not None:
            n_fus = n_clm
        else:
            n_fus = float(counted.sum())
        clm_unit = clm_rows / n_clm if n_clm > 0 else clm_rows * 0
        fusion_unit = fusion_rows / n_fus if n_fus > 0 else fusion_rows * 0
    rows = dense_fusion_rows(z, flat_labels, ids, tl, weights, lam * clm_unit, (1 - lam) * fusion_unit,
                             temperature=temperature, loss_type=loss_type, ignore_index=ignore_index)
    clm_part = dense_fusion_rows(z, flat_labels, ids, tl, weights, clm_unit, fusion_unit * 0,
                                 temperature=temperature, loss_type=loss_type, ignore_index=ignore_index)
    fus_part = dense_fusion_rows(z, flat_labels, ids, tl, weights, clm_unit * 0, fusion_unit,
                                 temperature=temperature, loss_type=loss_type, ignore_index=ignore_index)
    if reduction == "none":
        return rows.reshape(lead), clm_part.detach().reshape(lead), fus_part.detach().reshape(lead)
    return rows.sum(), clm_part.detach().sum(), fus_part.detach().sum()


def make_case(seed=0, lead=(2, 6), vocab=37, n_teachers=3, k=4, logits_dtype=torch.float32,
              absent_fraction=0.2, pad_fraction=0.3, ignore_fraction=0.25, duplicates=True):
    """Random inputs: some labels ignored, some entries padded (-inf), some teachers absent at
    some rows, duplicate ids within and across teachers. Returns a dict of tensors."""
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(*lead, vocab, generator=gen) * 2).to(logits_dtype)
    labels = torch.randint(0, vocab, lead, generator=gen)
    labels[torch.rand(lead, generator=gen) < ignore_fraction] = -100
    ids = torch.randint(0, vocab, (*lead, n_teachers, k), generator=gen, dtype=torch.int64)
    if duplicates:
        ids[..., 0, 1] = ids[..., 0, 0]            # within a teacher
        ids[..., -1, 0] = ids[..., 0, 2]           # across teachers
    t_logits = torch.randn(*lead, n_teachers, k, generator=gen) * 3
    counts = torch.randint(1, k + 1, (*lead, n_teachers), generator=gen)
    counts[torch.rand(*lead, n_teachers, generator=gen) < absent_fraction] = 0
    counts[torch.rand(*lead, n_teachers, generator=gen) > pad_fraction] = k
    ce = torch.rand(*lead, n_teachers, generator=gen) * 3
    weights = torch.rand(*lead, n_teachers, generator=gen)
    padded = t_logits.masked_fill(torch.arange(k) >= counts[..., None], float("-inf"))
    return dict(logits=logits, labels=labels, teacher_ids=ids, teacher_logits=padded,
                raw_teacher_logits=t_logits, teacher_counts=counts, teacher_ce=ce, teacher_weights=weights)
