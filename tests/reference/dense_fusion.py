"""Float64 dense reference of the fusion-loss backend contract (see fusekernels/loss/backend.py).

Everything is materialised densely in float64 on purpose: it is the ground truth the Triton
kernel and the torch path are compared with, not a fast implementation.
"""
from __future__ import annotations

import torch


def dense_fused_target(teacher_ids, teacher_logits, teacher_weights, vocab_size, temperature=1.0):
    """Fused target q [N, V] float64.

    teacher_ids [N, T, k] int, teacher_logits [N, T, k] float (-inf = padding entry),
    teacher_weights [N, T] float. Each teacher's valid entries are softmaxed (logits / temperature);
    duplicate ids add up; teachers are mixed with the given weights (a teacher with no valid
    entry contributes nothing).
    """
    n, t, k = teacher_ids.shape
    q = torch.zeros(n, vocab_size, dtype=torch.float64)
    logits = teacher_logits.double() / temperature
    valid = torch.isfinite(teacher_logits)
    for ti in range(t):
        lg = logits[:, ti].masked_fill(~valid[:, ti], float("-inf"))
        has = valid[:, ti].any(-1)
        p = torch.softmax(lg.masked_fill(~has[:, None], 0.0), dim=-1)
        p = torch.where(valid[:, ti], p, torch.zeros_like(p))
        ids = teacher_ids[:, ti].long().clamp(0, vocab_size - 1)
        q.scatter_add_(1, ids, p * teacher_weights[:, ti].double()[:, None])
    return q


def dense_fusion_rows(logits, labels, teacher_ids, teacher_logits, teacher_weights,
                      clm_scale, fusion_scale, temperature=1.0, loss_type="kl", ignore_index=-100):
    """Per-row loss [N] float64 of the backend contract:

    row_loss[n] = clm_scale[n] * CE(z_n, labels[n])            (0 where labels[n] == ignore_index)
                + fusion_scale[n] * sum_v q(v) (log q(v)? - log softmax(z_n)(v))   (log q only for "kl")
    """
    z = logits.double()
    logp = torch.log_softmax(z, dim=-1)
    q = dense_fused_target(teacher_ids, teacher_logits, teacher_weights, z.shape[-1], temperature)
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels)).long()
    clm = torch.where(valid, -logp.gather(1, safe[:, None])[:, 0], torch.zeros(len(labels), dtype=torch.float64))
    plogp = torch.where(q > 0, q * logp, torch.zeros_like(q))
    fus = -plogp.sum(-1)
    if loss_type == "kl":
        fus = fus + torch.where(q > 0, q * torch.log(q.clamp_min(1e-300)), torch.zeros_like(q)).sum(-1)
    return clm_scale.double() * clm + fusion_scale.double() * fus
