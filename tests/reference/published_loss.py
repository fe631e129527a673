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


# ---------------------------------------------------------------------------------------------
# Published PRECISION: the same recipe with the published code's own dtypes, step by step (bf16
# dense targets built position by position in the collator, bf16 rewards, the trainer's
# branches). Independent of the library; used to check precision="published" bit for bit.
# ---------------------------------------------------------------------------------------------

def bf16_reward(metric):
    """``1 / torch.exp(torch.tensor(metric, dtype=torch.bfloat16))`` as the trainer writes it."""
    return 1 / torch.exp(torch.tensor(metric, dtype=torch.bfloat16))


def collate_bf16(base, aligned, vocab_size, length, temperature, pad_token_id):
    """The collator: dense bf16 [B, L, V] targets of the base model and of each aligned teacher.

    base / aligned[i]: {"indices": [seq][pos][ids], "logits": [seq][pos][logits]}; an aligned
    position with an empty list takes the base model's target ("bad case"); positions past a
    sequence are one-hot on the pad id.
    """
    batch = len(base["logits"])
    base_dist = torch.zeros(batch, length, vocab_size).to(torch.bfloat16)
    dists = [torch.zeros(batch, length, vocab_size).to(torch.bfloat16) for _ in aligned]
    for i in range(batch):
        seq_len = len(base["logits"][i])
        for j in range(length):
            if j < seq_len:
                prob = torch.softmax(torch.tensor(base["logits"][i][j], dtype=torch.bfloat16) / temperature, -1)
                base_dist[i][j] = base_dist[i][j].scatter_(-1, torch.tensor(base["indices"][i][j]), prob)
                for teacher, dist in zip(aligned, dists):
                    if len(teacher["indices"][i][j]) > 0:
                        prob = torch.softmax(torch.tensor(teacher["logits"][i][j], dtype=torch.bfloat16)
                                             / temperature, -1)
                        dist[i][j] = dist[i][j].scatter_(-1, torch.tensor(teacher["indices"][i][j]), prob)
                    else:
                        dist[i][j] = base_dist[i][j]
            else:
                base_dist[i][j][pad_token_id] = 1.0
                for dist in dists:
                    dist[i][j][pad_token_id] = 1.0
    return base_dist, dists


def fused_target_bf16(base_dist, base_metric, dists, metrics, mode, use_base):
    """The trainer's fused target (bf16 [B, L, V]) and its soft-schedule reward [B] (bf16).

    base_metric [B] and metrics[i] [B] are the per-sequence metric_ce lists. ``use_base``: the
    base distribution is one of the fused ones (at most two aligned teachers, as published).
    """
    base_reward = bf16_reward(base_metric) if use_base else None
    rewards = [bf16_reward(m) for m in metrics]
    if mode == "mince":
        if not use_base:
            expand = [r.unsqueeze(-1).unsqueeze(-1).expand_as(d) for r, d in zip(rewards, dists)]
            target = torch.where(expand[0] > expand[1], dists[0], dists[1]) if len(dists) == 2 else dists[0]
            soft = torch.max(torch.stack(rewards, dim=-1), dim=-1)[0]
        else:
            dist_list = [base_dist] + list(dists)
            reward_list = [r.unsqueeze(-1).unsqueeze(-1).expand_as(d)
                           for r, d in zip([base_reward] + rewards, dist_list)]
            stacked_dists = torch.stack(dist_list, dim=-1)
            index = torch.argmax(torch.stack(reward_list, dim=-1), dim=-1, keepdim=True)
            target = torch.gather(stacked_dists, -1, index).squeeze(-1)
            soft = torch.max(torch.stack([base_reward] + rewards, dim=-1), dim=-1)[0]
        return target, soft
    weights = torch.stack(([base_reward] if use_base else []) + rewards, dim=1)
    normalized = torch.softmax(weights, dim=1)
    dist_list = ([base_dist] if use_base else []) + list(dists)
    target = normalized[:, 0].unsqueeze(1).unsqueeze(2) * dist_list[0]
    for t in range(1, len(dist_list)):
        target = target + normalized[:, t].unsqueeze(1).unsqueeze(2) * dist_list[t]
    return target, weights.mean(dim=1)


def published_precision_loss(student_logits, labels, attention_mask, base, aligned, *, mode="mince",
                             loss_type="kl", temperature=1.0, lam=0.9, schedule="hard", use_base=True,
                             pad_token_id=0):
    """Total published loss in the published dtypes (fp32 logits, bf16 targets and rewards).

    base: {"indices", "logits", "metric_ce": [B]}; aligned: list of the same (<= 2 without base).
    Returns (total, clm, fusion, target) with the bf16 dense fused target [B, L, V].
    """
    z = student_logits.float()
    batch, length, vocab = z.shape
    base_dist, dists = collate_bf16(base, aligned, vocab, length, temperature, pad_token_id)
    target, reward = fused_target_bf16(base_dist, base["metric_ce"], dists, [a["metric_ce"] for a in aligned],
                                       mode, use_base)
    if loss_type == "ce":
        per_pos = torch.nn.functional.cross_entropy(z.view(-1, vocab), target.view(-1, vocab),
                                                    reduction="none").view(batch, -1)
    else:
        per_pos = torch.nn.functional.kl_div(torch.log_softmax(z, dim=-1), target, log_target=False,
                                             reduction="none").sum(dim=-1)
    fusion = (per_pos * attention_mask).sum() / attention_mask.sum()
    clm = torch.nn.functional.cross_entropy(z[:, :-1].reshape(-1, vocab), labels[:, 1:].reshape(-1),
                                            ignore_index=-100)
    if schedule == "soft":
        assert batch == 1
        total = (1.0 - reward[0]) * clm + reward[0] * fusion
    else:
        total = lam * clm + (1.0 - lam) * fusion
    return total, clm, fusion, target


def published_extract(logits, labels, attention_mask, k):
    """The published extraction of one batch: logits [B, L, V] cast to fp16, per-token CE in fp16,
    metric_ce = fp16 mean over attention_mask[..., 1:], top-k of the fp16 logits.
    labels [B, L] unshifted (-100 at padding). Returns (topk values fp16, topk ids, metric fp16 [B],
    token ce fp16 [B, L-1])."""
    logits = logits.to(torch.float16)
    token_ce = torch.nn.functional.cross_entropy(
        logits[..., :-1, :].contiguous().view(-1, logits.size(-1)).float(), labels[..., 1:].contiguous().view(-1),
        reduction="none").view(logits.size(0), -1).to(torch.float16)
    metric = (token_ce * attention_mask[..., 1:]).sum(dim=-1) / attention_mask[..., 1:].sum(dim=-1)
    values, ids = torch.topk(logits, k=k)
    return values, ids, metric, token_ce
