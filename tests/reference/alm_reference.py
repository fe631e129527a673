"""Approximate likelihood matching, written out from the paper's definitions in float64 loops.

Independent of ``fusekernels.loss.alm``: dense log-softmax, explicit chunk loops, the binary KL
written as its two Bernoulli terms. Used as the oracle of the ALM loss tests.
"""
from __future__ import annotations

import math

import torch


def _binary_kl(teacher_lp: float, student_lp: torch.Tensor, tau: float) -> torch.Tensor:
    la = min(teacher_lp / tau, -1e-6)
    lb = torch.clamp(student_lp / tau, max=-1e-6)
    a, b = math.exp(la), torch.exp(lb)
    return a * (math.log(a) - torch.log(b)) + (1 - a) * (math.log(1 - a) - torch.log(1 - b))


def alm_loss_reference(logits, labels, span, chunk_lp, teacher_ce, *, lam, tau=1.0, fusion="mince",
                       ignore_index=-100):
    """lam * mean CLM + (1 - lam) * (sum over valid chunks of w * D) / (labelled rows), with the
    fusion weights of each chunk from the rule over the teachers whose valid chunks cover its last
    row. logits [B, L, V] float64 (requires_grad for gradients), labels [B, L], span / chunk_lp /
    teacher_ce [B, L, T]."""
    B, L, _ = logits.shape
    T = span.shape[-1]
    logp = torch.log_softmax(logits, -1)
    labelled = labels != ignore_index
    row_lp = {}
    for b in range(B):
        for r in range(L):
            if labelled[b, r]:
                row_lp[b, r] = logp[b, r, labels[b, r]]
    n_label = int(labelled.sum())
    clm = -sum(row_lp.values()) / n_label
    chunks = []  # (b, e, t, rows)
    covers = torch.zeros(B, L, T, dtype=torch.bool)
    for b in range(B):
        for e in range(L):
            for t in range(T):
                s = int(span[b, e, t])
                if s == 0 or e - s + 1 < 0:
                    continue
                rows = list(range(e - s + 1, e + 1))
                if all(bool(labelled[b, r]) for r in rows):
                    chunks.append((b, e, t, rows))
                    for r in rows:
                        covers[b, r, t] = True
    total = torch.zeros((), dtype=torch.float64)
    for b, e, t, rows in chunks:
        present = [u for u in range(T) if covers[b, e, u]]
        ce = {u: float(teacher_ce[b, e, u]) for u in present}
        if fusion == "mince":
            best = max(present, key=lambda u: (math.exp(-ce[u]), -u))
            w = 1.0 if t == best else 0.0
        else:  # avgce: softmax of the rewards over the present teachers
            z = sum(math.exp(math.exp(-ce[u])) for u in present)
            w = math.exp(math.exp(-ce[t])) / z
        student = sum(row_lp[b, r] for r in rows)
        total = total + w * _binary_kl(float(chunk_lp[b, e, t]), student, tau)
    return lam * clm + (1 - lam) * total / n_label
