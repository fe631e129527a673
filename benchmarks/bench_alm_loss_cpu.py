"""CPU benchmark of the likelihood-matching fusion term (``loss_type="alm"``), forward + backward,
every variant measured in the same run.

Shape: N = 2048 rows (4 sequences x 512), V = 32000, T = 2 teachers whose aligned chunks tile
every sequence (1 to 3 rows each, as real tokenizer pairs give), fp32 student logits, lam = 0.5,
MinCE per token.

(a) torch eager: ``log_softmax`` of the whole [N, V] logits, the label log-probabilities gathered,
    chunk sums by ``index_add``, the binary KL of every chunk and the CLM term through autograd
    (what one writes from the paper's definition).
(b) fusekernels ALM: ``fusion_loss(..., loss_type="alm", backend="torch")``.
(c) fusekernels KL on the same batch (top-k 10): the cost of the top-k fusion term beside it.

Run: python -m pytest benchmarks/bench_alm_loss_cpu.py -q -s
"""
from __future__ import annotations

import statistics
import time

import pytest
import torch

from fusekernels.loss import fusion_loss

BATCH, LENGTH, VOCAB, K, TEACHERS, LAM = 4, 512, 32000, 10, 2, 0.5
N = BATCH * LENGTH
ROUNDS = 3


@pytest.fixture(scope="module")
def data():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(BATCH, LENGTH, VOCAB, generator=gen) * 2
    labels = torch.randint(0, VOCAB, (BATCH, LENGTH), generator=gen)
    labels[:, -1] = -100
    span = torch.zeros(BATCH, LENGTH, TEACHERS, dtype=torch.int64)
    chunk_lp = torch.zeros(BATCH, LENGTH, TEACHERS)
    for b in range(BATCH):
        for t in range(TEACHERS):
            end = 0
            while True:
                size = int(torch.randint(1, 4, (1,), generator=gen))
                if end + size > LENGTH - 1:
                    break
                end += size
                span[b, end - 1, t] = size
                chunk_lp[b, end - 1, t] = -float(torch.rand(1, generator=gen)) * 3 * size
    ce = torch.rand(BATCH, LENGTH, TEACHERS, generator=gen)
    ids = torch.stack([torch.randperm(VOCAB, generator=gen)[:TEACHERS * K] for _ in range(N)])
    ids = ids.reshape(BATCH, LENGTH, TEACHERS, K).to(torch.int32)
    t_logits = torch.randn(BATCH, LENGTH, TEACHERS, K, generator=gen).sort(-1, descending=True).values * 3
    return dict(logits=logits, labels=labels, span=span, chunk_lp=chunk_lp, ce=ce, ids=ids, t_logits=t_logits)


def eager_step(d):
    """The paper's definition in torch autograd: dense log_softmax, gathered label log-probs,
    chunk sums by index_add, binary KL per chunk, MinCE per token over the covering teachers."""
    logits = d["logits"].clone().requires_grad_(True)
    logp = torch.log_softmax(logits, -1)
    labels = d["labels"]
    ok = labels != -100
    row_lp = torch.where(ok, logp.gather(-1, labels.clamp_min(0)[..., None])[..., 0], torch.zeros(()))
    flat_lp = row_lp.reshape(-1)
    span, chunk_lp, ce = (d[k].reshape(N, TEACHERS) for k in ("span", "chunk_lp", "ce"))
    ends = torch.nonzero(span > 0)                                          # [C, 2] (row, teacher)
    sizes = span[ends[:, 0], ends[:, 1]]
    # every row of every chunk, and its chunk
    first = ends[:, 0] - sizes + 1
    offsets = torch.arange(int(sizes.sum())) - torch.repeat_interleave(torch.cumsum(sizes, 0) - sizes, sizes)
    rows = torch.repeat_interleave(first, sizes) + offsets
    chunk_of = torch.repeat_interleave(torch.arange(len(ends)), sizes)
    student = torch.zeros(len(ends)).index_add(0, chunk_of, flat_lp[rows])
    a = torch.exp(chunk_lp[ends[:, 0], ends[:, 1]].clamp(max=-1e-6))
    lb = student.clamp(max=-1e-6)
    b = torch.exp(lb)
    kl = a * (torch.log(a) - lb) + (1 - a) * (torch.log1p(-a) - torch.log1p(-b))
    # MinCE per token over the teachers whose chunks cover the row, decided at each chunk's last row
    covers = torch.zeros(N, TEACHERS, dtype=torch.bool)
    covers[rows, torch.repeat_interleave(ends[:, 1], sizes)] = True
    best = torch.argmin(torch.where(covers, ce, torch.full_like(ce, float("inf"))), -1)
    weight = (best[ends[:, 0]] == ends[:, 1]).float()
    n = ok.sum()
    fusion = (weight * kl).sum() / n
    clm = -row_lp.sum() / n
    return torch.autograd.grad(LAM * clm + (1 - LAM) * fusion, logits)[0]


def alm_step(d):
    logits = d["logits"].clone().requires_grad_(True)
    loss = fusion_loss(logits, d["labels"], None, None, teacher_chunk_span=d["span"],
                       teacher_chunk_logprob=d["chunk_lp"], teacher_ce=d["ce"], fusion="mince", loss_type="alm",
                       lam=LAM, backend="torch")
    return torch.autograd.grad(loss, logits)[0]


def kl_step(d):
    logits = d["logits"].clone().requires_grad_(True)
    loss = fusion_loss(logits, d["labels"], d["ids"], d["t_logits"], teacher_ce=d["ce"], fusion="mince",
                       loss_type="kl", lam=LAM, backend="torch")
    return torch.autograd.grad(loss, logits)[0]


STEPS = {"torch_eager_alm": eager_step, "fusekernels_alm": alm_step, "fusekernels_kl": kl_step}


def test_alm_loss_cpu(benchmark, data):
    """Rounds interleave the variants (load changes hit all alike); ratios use each one's best round."""
    times = {name: [] for name in STEPS}
    grads = {}
    for _ in range(ROUNDS):
        for name, step in STEPS.items():
            start = time.perf_counter()
            grads[name] = step(data)
            times[name].append(time.perf_counter() - start)
    # the chunks tile every sequence with valid labels, so every teacher covers every chunk row:
    # the eager path's per-token MinCE is the library's (same gradient)
    torch.testing.assert_close(grads["fusekernels_alm"], grads["torch_eager_alm"], rtol=1e-4, atol=1e-8)
    benchmark.pedantic(alm_step, args=(data,), rounds=2, iterations=1)
    best = {name: min(values) for name, values in times.items()}
    lines = [f"threads={torch.get_num_threads()} N={N} V={VOCAB} T={TEACHERS} rounds={ROUNDS}",
             *(f"{name:>16}: best {best[name] * 1e3:8.1f} ms, median {statistics.median(times[name]) * 1e3:8.1f} ms"
               " (forward+backward)" for name in STEPS),
             f"fusekernels ALM vs torch eager ALM: {best['torch_eager_alm'] / best['fusekernels_alm']:.2f}x",
             f"fusekernels ALM / fusekernels KL (top-10) time: {best['fusekernels_alm'] / best['fusekernels_kl']:.2f}"]
    print("\n" + "\n".join(lines))
