"""Float64 re-implementation of the PUBLISHED FuseLLM collator + loss (spec section 7).

Deliberately written the way the published recipe works, not the way the library does: the data
collator expands every teacher's aligned top-k pairs into a DENSE [B, L, V] target with a Python
loop over positions, the trainer fuses the dense targets per sequence (MinCE / AvgCE on rewards
exp(-metric_ce)) and computes kl_div / soft-target cross-entropy over all positions, averaged over
the attention mask, plus lam times the Hugging Face shifted causal-LM loss. Everything is float64
(the published code used bf16 targets): this is a ground truth, not a speed baseline.

Per-teacher input format (one dict per teacher, teacher 0 being the base model itself):
    {"indices": [per sequence: [per position: [ids]]],
     "logits":  [per sequence: [per position: [logits]]],
     "metric_ce": [per sequence: float]}
A position with an empty aligned list falls back to the base model's (teacher 0's) distribution.
Positions beyond a sequence's length are padding: one-hot on ``pad_token_id``.
"""
from __future__ import annotations

import torch


def dense_teacher_target(indices, logits, vocab_size, length, temperature, pad_token_id, fallback=None):
    """Dense [length, V] float64 target of one teacher on one sequence, built position by position."""
    target = torch.zeros(length, vocab_size, dtype=torch.float64)
    for pos in range(length):
        if pos >= len(logits):
            target[pos, pad_token_id] = 1.0
        elif len(logits[pos]) == 0:
            target[pos] = fallback[pos]
        else:
            probs = torch.softmax(torch.tensor(logits[pos], dtype=torch.float64) / temperature, dim=-1)
            target[pos, torch.tensor(indices[pos], dtype=torch.long)] = probs
    return target


def published_targets(teachers, vocab_size, length, temperature, pad_token_id):
    """[T, B, L, V] float64 dense targets of every teacher (teacher 0 = base model)."""
    per_teacher = []
    base = None
    for t, teacher in enumerate(teachers):
        seqs = []
        for b in range(len(teacher["logits"])):
            fallback = None if t == 0 else base[b]
            seqs.append(dense_teacher_target(teacher["indices"][b], teacher["logits"][b], vocab_size,
                                             length, temperature, pad_token_id, fallback))
        stacked = torch.stack(seqs)
        if t == 0:
            base = stacked
        per_teacher.append(stacked)
    return torch.stack(per_teacher)


def fuse_targets(targets, metric_ce, mode):
    """Fused [B, L, V] target from [T, B, L, V] targets and per-sequence metric_ce [T, B].

    "mince" (distill_greater_as_gt): the teacher with the largest reward exp(-ce) (first on ties);
    "avgce" (distill_weighted_as_gt): weights softmax(reward) over teachers.
    """
    reward = torch.exp(-torch.as_tensor(metric_ce, dtype=torch.float64))  # [T, B]
    n_teachers, batch = reward.shape
    fused = torch.zeros_like(targets[0])
    for b in range(batch):
        if mode == "mince":
            best = max(range(n_teachers), key=lambda t: (reward[t, b].item(), -t))
            fused[b] = targets[best, b]
        elif mode == "avgce":
            weights = torch.softmax(reward[:, b], dim=0)
            for t in range(n_teachers):
                fused[b] += weights[t] * targets[t, b]
        else:
            raise ValueError(mode)
    return fused


def published_fusion_loss(student_logits, labels, attention_mask, teachers, *, mode="mince",
                          loss_type="kl", temperature=1.0, lam=0.9, pad_token_id=0,
                          metric_dtype=torch.float32):
    """Published total loss (float64): lam * CLM + (1 - lam) * fusion.

    student_logits [B, L, V]; labels [B, L] UNshifted (input ids, -100 where ignored) as a Hugging
    Face causal LM receives them; attention_mask [B, L]; teachers as in the module doc.
    ``metric_dtype`` rounds metric_ce before the rewards, as the stored metrics are float32.
    Returns (total, clm, fusion) as 0-d float64 tensors.
    """
    z = student_logits.double()
    batch, length, vocab = z.shape
    targets = published_targets(teachers, vocab, length, temperature, pad_token_id)
    metric = torch.tensor([t["metric_ce"] for t in teachers], dtype=metric_dtype).double()
    target = fuse_targets(targets, metric, mode)
    logp = torch.log_softmax(z, dim=-1)
    if loss_type == "ce":
        per_pos = -(target * logp).sum(-1)
    else:  # torch.nn.functional.kl_div(logp, target, reduction="none") summed: 0 * log 0 = 0
        log_target = torch.log(torch.where(target > 0, target, torch.ones_like(target)))
        per_pos = torch.where(target > 0, target * (log_target - logp), torch.zeros_like(target)).sum(-1)
    mask = attention_mask.double()
    fusion = (per_pos * mask).sum() / mask.sum()
    shifted_logp = logp[:, :-1].reshape(-1, vocab)
    shifted_labels = labels[:, 1:].reshape(-1)
    used = shifted_labels != -100
    clm = -shifted_logp[used].gather(1, shifted_labels[used][:, None]).mean()
    return lam * clm + (1 - lam) * fusion, clm, fusion
