"""``precision="published"``: the fusion weights and targets exactly as the published code rounds them.

The published FuseLLM / FuseChat trainer and data collator compute in low precision (bf16 /
fp16), and a few of its choices follow from that rounding:

- rewards are ``1 / exp(bf16(ce))`` in bf16, so CEs that round to the same bf16 value tie; MinCE
  takes the argmax, i.e. the FIRST tied teacher (the base model's distribution comes first);
- with no base distribution and exactly two teachers the code is ``where(r0 > r1, d0, d1)``: an
  exact tie goes to the SECOND teacher;
- AvgCE weights are a bf16 softmax of the bf16 rewards;
- each teacher's target is ``softmax(bf16(logits) / T)`` in bf16, scattered into a bf16 vector
  (a repeated id keeps its last write), and the AvgCE mixture is summed in bf16, teacher by
  teacher (``w0 * d0 + w1 * d1 + w2 * d2``), every product and sum rounded to bf16.

Everything here runs with torch's CPU bf16 arithmetic, as the published collator did (on CPU,
in its data loader), so the values are the same bits on every device; the tensors involved are
only ``[N, T, k]``. The loss itself then runs on the merged sparse target in fp32.
"""
from __future__ import annotations

import torch

_CPU = torch.device("cpu")


def published_rewards(teacher_ce: torch.Tensor) -> torch.Tensor:
    """``1 / exp(bf16(ce))`` [..., T] in bf16 on the CPU, as the published trainer computes them."""
    ce = teacher_ce.detach().to(_CPU)
    return 1 / torch.exp(ce.to(torch.bfloat16))


def _first_best(present: torch.Tensor, reward: torch.Tensor) -> torch.Tensor:
    """argmax over teachers returning the first maximal index; rewards lie in [0, 1], -1 marks absence."""
    return torch.where(present, reward, torch.full_like(reward, -1.0)).argmax(dim=-1)


def published_mince_weights(present: torch.Tensor, teacher_ce: torch.Tensor, base_teacher: bool = True):
    """MinCE one-hot [N, T] float32 of the published trainer (bf16 rewards and ties).

    present [N, T] bool (teachers with an entry at the row); teacher_ce [N, T] float.
    ``base_teacher``: teacher 0 is the base model's own distribution (the published code then
    takes the argmax over all teachers: ties -> first); without it two teachers use the
    ``where(r0 > r1, d0, d1)`` rule (ties -> second; the published code has no case of more than
    two teachers without the base: the argmax is used). Absent teachers never win a row.
    """
    device = present.device
    present = present.to(_CPU)
    reward = published_rewards(teacher_ce)
    n_teachers = present.shape[-1]
    if not base_teacher and n_teachers == 2:
        # torch.where(r0 > r1, d0, d1): ties go to the second teacher; an absent one never wins
        first = present[:, 0] & ((reward[:, 0] > reward[:, 1]) | ~present[:, 1])
        best = torch.where(first, 0, 1)
    else:
        best = _first_best(present, reward)
    weights = torch.nn.functional.one_hot(best, n_teachers).to(torch.bool) & present
    return weights.to(device=device, dtype=torch.float32)


def published_avgce_weights(present: torch.Tensor, teacher_ce: torch.Tensor, base_teacher: bool = True):
    """AvgCE weights [N, T] float32 of the published trainer: a bf16 softmax of the bf16 rewards
    over the present teachers (rows without one: 0)."""
    device = present.device
    present = present.to(_CPU)
    reward = published_rewards(teacher_ce)
    scores = torch.where(present, reward, torch.full_like(reward, float("-inf")))
    soft = torch.softmax(scores, dim=-1)  # bf16 in, bf16 out (fp32 inside), as published
    soft = torch.where(present.any(-1, keepdim=True), soft, torch.zeros_like(soft))
    return soft.float().to(device)


def published_max_reward(present: torch.Tensor, teacher_ce: torch.Tensor) -> torch.Tensor:
    """[N] bf16 best reward of the present teachers (0 without one): MinCE's soft-lam reward."""
    reward = published_rewards(teacher_ce)
    return torch.where(present.to(_CPU), reward, torch.zeros_like(reward)).amax(-1)


def published_mean_reward(present: torch.Tensor, teacher_ce: torch.Tensor) -> torch.Tensor:
    """[N] bf16 mean reward of the present teachers: AvgCE's soft-lam reward. torch's bf16 mean
    (what the published ``weights.mean(dim=1)`` runs) where every teacher is present; otherwise
    the mean over the present ones, rounded once to bf16."""
    present = present.to(_CPU)
    reward = published_rewards(teacher_ce)
    count = present.sum(-1)
    total = torch.where(present, reward.float(), torch.zeros(())).sum(-1)
    partial = torch.where(count > 0, total / count.clamp_min(1), torch.zeros(())).to(torch.bfloat16)
    return torch.where(present.all(-1), reward.mean(-1), partial)


def published_entropy(probs: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """Per-row ``sum_v xlogy(q, q)`` [N] of the published ``kl_div``: each term is computed on
    the bf16 target and rounded to bf16, the sum runs in ``dtype``.

    probs [N, 1, E] float (the merged target of :func:`published_target`, -inf = unused slot).
    """
    q = probs.detach().reshape(probs.shape[0], -1).to(_CPU)
    q = torch.where(q > float("-inf"), q, torch.zeros_like(q)).to(torch.bfloat16)
    terms = torch.xlogy(q, q)  # bf16 in, bf16 out, as kl_div(log_softmax(z), bf16 target)
    return terms.to(dtype).sum(-1).to(probs.device)


def published_target(teacher_ids: torch.Tensor, teacher_logits: torch.Tensor, weights: torch.Tensor,
                     temperature: float):
    """The published collator's fused target, as one sparse list per row.

    teacher_ids [N, T, k] int (in range where valid); teacher_logits [N, T, k] float (-inf =
    padding); weights [N, T] float (from :func:`published_weights`).
    Returns (ids [N, 1, T*k] int32, probs [N, 1, T*k] float32 with -inf at unused slots,
    row_weight [N, 1] float32: 1 where a teacher is present). Every id appears once per row;
    its probability is the bf16 value of the published dense target.
    """
    device = teacher_ids.device
    n, n_teachers, k = teacher_ids.shape
    ids = teacher_ids.to(_CPU, torch.int64)
    raw = teacher_logits.detach().to(_CPU)
    valid = raw > float("-inf")
    probs = torch.softmax(raw.to(torch.bfloat16) / temperature, dim=-1)
    probs = torch.where(valid, probs, torch.zeros_like(probs))  # absent teachers: NaN -> 0
    # scatter_ keeps one write per repeated id (the last on the CPU): drop the earlier ones
    same = (ids[..., :, None] == ids[..., None, :]) & valid[..., :, None] & valid[..., None, :]
    later = torch.triu(torch.ones(k, k, dtype=torch.bool), diagonal=1)
    shadowed = (same & later).any(-1)
    probs = torch.where(shadowed, torch.zeros_like(probs), probs)
    valid = valid & ~shadowed

    # one slot per distinct id of the row (invalid entries share a sentinel slot at the end)
    flat_ids = ids.reshape(n, n_teachers * k)
    flat_valid = valid.reshape(n, n_teachers * k)
    key = torch.where(flat_valid, flat_ids, torch.full_like(flat_ids, torch.iinfo(torch.int64).max))
    sorted_key, order = torch.sort(key, dim=-1, stable=True)
    starts = torch.ones_like(sorted_key, dtype=torch.bool)
    starts[:, 1:] = sorted_key[:, 1:] != sorted_key[:, :-1]
    slot = torch.empty_like(order).scatter_(1, order, torch.cumsum(starts, -1) - 1)

    w = weights.detach().to(_CPU).to(torch.bfloat16)
    acc = torch.zeros(n, n_teachers * k, dtype=torch.bfloat16)
    for t in range(n_teachers):  # w0 * d0 + w1 * d1 + ...: bf16 products, bf16 running sum
        part = w[:, t, None] * probs[:, t]
        acc.scatter_add_(1, slot[:, t * k:(t + 1) * k], part)
    used = torch.zeros(n, n_teachers * k, dtype=torch.int64).scatter_add_(1, slot, flat_valid.to(torch.int64)) > 0
    out_ids = torch.zeros(n, n_teachers * k, dtype=torch.int64).scatter_(
        1, slot, torch.where(flat_valid, flat_ids, torch.zeros_like(flat_ids)))
    # a slot of an absent teacher's ids only (weight 0) is still a valid entry with q = 0
    out_probs = torch.where(used, acc.float(), torch.full_like(acc, float("-inf"), dtype=torch.float32))
    row_weight = (weights.detach().to(_CPU).sum(-1, keepdim=True) > 0).float()
    return (out_ids.to(torch.int32).reshape(n, 1, -1).to(device), out_probs.reshape(n, 1, -1).to(device),
            row_weight.to(device))
