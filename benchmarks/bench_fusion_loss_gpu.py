"""GPU benchmark of the Triton fusion-loss and teacher top-k kernels (skipped without CUDA).

Shape: N = 16384 rows, V in {32000, 152064}, bf16 student logits, T = 3 teachers, k = 10, KL,
lam = 0.9. Everything below is forward + backward (the kernel produces the gradient in its
forward, as fused cross-entropy kernels do), timed with CUDA events (median), in one run:

- kernel: ``fusion_loss_rows_triton(compute_grad=True)`` (out-of-place and in-place gradient);
- HBM floor: the least traffic any exact implementation needs, read the logits once and write
  the gradient once (4 N V bytes for bf16). The kernel reads the logits twice (6 N V bytes).
  The practical peak is a ``torch`` copy of the same N x V tensor (it moves exactly the floor's
  bytes), the nominal peak is the card's data-sheet bandwidth when the card is known;
- torch eager on a dense target (as the published recipe computes it): the fused target
  materialised as a dense [N, V] bf16 tensor (built outside the timed region), then
  log_softmax + KL + causal-LM CE through autograd;
- Liger-Kernel on the same dense target (``LigerKLDIVLoss`` on log_softmax, plus
  ``LigerCrossEntropyLoss``), only when ``liger_kernel`` imports;
- a sweep of (BLOCK_V, num_warps) launch configurations, to tune ``default_launch_config``;
- the teacher kernel vs ``torch.topk`` + ``torch.logsumexp`` + gather.

Run: python -m pytest benchmarks/bench_fusion_loss_gpu.py -q -s
Sizes can be reduced with FK_BENCH_ROWS (default 16384) and FK_BENCH_VOCABS (e.g. "32000").
"""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("the GPU benchmark needs a CUDA device", allow_module_level=True)
triton = pytest.importorskip("triton")

from fusekernels.kernels.fusion_loss_triton import launch_fusion_loss_rows  # noqa: E402
from fusekernels.kernels.teacher_topk_triton import teacher_topk_rows_triton  # noqa: E402

N_ROWS = int(os.environ.get("FK_BENCH_ROWS", "16384"))
VOCABS = [int(v) for v in os.environ.get("FK_BENCH_VOCABS", "32000,152064").split(",")]
TEACHERS, K, LAM, TEMPERATURE = 3, 10, 0.9, 1.0
SWEEP = [(2048, 4), (4096, 4), (4096, 8), (8192, 8), (8192, 16), (16384, 16), (32768, 32)]
# Data-sheet HBM bandwidth (GB/s) by device-name fragment; checked in this order.
NOMINAL_GBPS = [("H200", 4800.0), ("H100 PCIe", 2000.0), ("H100 NVL", 3900.0), ("H100", 3350.0),
                ("A100-SXM4-80GB", 2039.0), ("A100 80GB PCIe", 1935.0), ("A100", 1555.0),
                ("L40S", 864.0), ("A10G", 600.0), ("RTX 4090", 1008.0)]


def nominal_bandwidth_gbps(name: str) -> float | None:
    for fragment, gbps in NOMINAL_GBPS:
        if fragment in name:
            return gbps
    return None


def cuda_time_ms(fn, warmup: int = 3, reps: int = 10) -> float:
    """Median wall time of ``fn()`` in ms, measured with CUDA events around each call."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def make_inputs(n_rows: int, vocab: int, device: str = "cuda", seed: int = 0) -> dict:
    """Student bf16 logits and teacher top-k data shaped like a FuseLLM batch (contract layout)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    logits = (torch.randn(n_rows, vocab, device=device, generator=gen) * 3).to(torch.bfloat16)
    labels = torch.randint(0, vocab, (n_rows,), device=device, generator=gen)
    labels[::512] = -100  # last position of each 512-token sequence
    ids = torch.randint(0, vocab, (n_rows, TEACHERS, K), device=device, generator=gen, dtype=torch.int32)
    t_logits = torch.randn(n_rows, TEACHERS, K, device=device, generator=gen).sort(-1, descending=True).values * 3
    weights = torch.softmax(torch.randn(n_rows, TEACHERS, device=device, generator=gen), dim=-1)
    valid = labels != -100
    clm_scale = torch.where(valid, LAM / valid.sum(), 0.0).float()
    fusion_scale = torch.full((n_rows,), (1 - LAM) / n_rows, device=device)
    return dict(logits=logits, labels=labels, ids=ids, t_logits=t_logits, weights=weights,
                clm_scale=clm_scale, fusion_scale=fusion_scale)


def dense_target(d: dict) -> torch.Tensor:
    """The fused target as a dense [N, V] bf16 tensor (what the published collator builds)."""
    probs = torch.softmax(d["t_logits"] / TEMPERATURE, dim=-1) * d["weights"][..., None]
    n_rows, vocab = d["logits"].shape
    q = torch.zeros(n_rows, vocab, dtype=torch.float32, device=d["logits"].device)
    q.scatter_add_(1, d["ids"].reshape(n_rows, -1).long(), probs.reshape(n_rows, -1))
    return q.to(torch.bfloat16)


def kernel_step(d: dict, logits: torch.Tensor, grad_inplace: bool = False, block_v=None, num_warps=None):
    return launch_fusion_loss_rows(
        logits, d["labels"], d["ids"], d["t_logits"], d["weights"], d["clm_scale"], d["fusion_scale"],
        temperature=TEMPERATURE, loss_type="kl", ignore_index=-100, compute_grad=True,
        grad_inplace=grad_inplace, block_v=block_v, num_warps=num_warps)


def eager_step(d: dict, q: torch.Tensor) -> torch.Tensor:
    """torch eager on the dense target: log_softmax (fp32) + KL + CLM CE, forward + backward."""
    logits = d["logits"].detach().requires_grad_(True)
    logp = torch.log_softmax(logits.float(), dim=-1)
    qf = q.float()
    kl = (torch.special.xlogy(qf, qf) - qf * logp).sum(-1).mean()
    clm = torch.nn.functional.nll_loss(logp, d["labels"], ignore_index=-100)
    (LAM * clm + (1 - LAM) * kl).backward()
    return logits.grad


def liger_step(d: dict, q: torch.Tensor, kl_loss, ce_loss) -> torch.Tensor:
    """Liger-Kernel on the dense target: log_softmax + LigerKLDIVLoss + LigerCrossEntropyLoss."""
    logits = d["logits"].detach().requires_grad_(True)
    logp = torch.log_softmax(logits.float(), dim=-1)
    kl = kl_loss(logp, q.float())
    clm = ce_loss(logits, d["labels"])
    (LAM * clm + (1 - LAM) * kl).backward()
    return logits.grad


def try_time(label: str, fn) -> float | None:
    """Time ``fn``; an out-of-memory baseline is reported as such instead of failing the run."""
    try:
        return cuda_time_ms(fn)
    except torch.cuda.OutOfMemoryError:
        print(f"  {label}: out of memory at this size")
        return None
    finally:
        torch.cuda.empty_cache()


@pytest.mark.parametrize("vocab", VOCABS)
def test_fusion_loss_kernel(benchmark, vocab):
    d = make_inputs(N_ROWS, vocab)
    name = torch.cuda.get_device_name()
    grad = torch.empty_like(d["logits"])
    scratch = d["logits"].clone()

    t_kernel = cuda_time_ms(lambda: kernel_step(d, d["logits"]))
    t_inplace = cuda_time_ms(lambda: kernel_step(d, scratch, grad_inplace=True))  # values drift; time only
    t_copy = cuda_time_ms(lambda: grad.copy_(d["logits"]))
    benchmark.pedantic(lambda: (kernel_step(d, d["logits"]), torch.cuda.synchronize()), rounds=5, iterations=1)

    elem = d["logits"].element_size()
    floor_bytes = 2 * N_ROWS * vocab * elem          # read logits once + write grad once
    kernel_bytes = 3 * N_ROWS * vocab * elem         # two reads + one write
    nominal = nominal_bandwidth_gbps(name)
    print(f"\n[{name}] fusion loss fwd+bwd, N={N_ROWS} V={vocab} bf16 T={TEACHERS} k={K}")
    print(f"  kernel {t_kernel:.3f} ms ({kernel_bytes / t_kernel / 1e6:.0f} GB/s achieved on its own traffic), "
          f"in-place grad {t_inplace:.3f} ms")
    print(f"  floor at practical peak (torch copy of N x V: {floor_bytes / t_copy / 1e6:.0f} GB/s) "
          f"{t_copy:.3f} ms -> kernel at {100 * t_copy / t_kernel:.0f}% of floor")
    if nominal is not None:
        t_floor = floor_bytes / (nominal * 1e6)
        print(f"  floor at nominal {nominal:.0f} GB/s {t_floor:.3f} ms "
              f"-> kernel at {100 * t_floor / t_kernel:.0f}% of floor")

    grad = scratch = None  # room for the dense baselines (about 13 x N x V bytes in fp32 autograd)
    q = dense_target(d)
    t_eager = try_time("torch eager", lambda: eager_step(d, q))
    if t_eager is not None:
        print(f"  torch eager on dense target {t_eager:.3f} ms -> kernel speed-up x{t_eager / t_kernel:.1f}")
    try:
        from liger_kernel.transformers import LigerCrossEntropyLoss, LigerKLDIVLoss
    except ImportError:
        print("  Liger-Kernel: not installed, skipped")
    else:
        kl_loss, ce_loss = LigerKLDIVLoss(reduction="batchmean"), LigerCrossEntropyLoss(ignore_index=-100)
        t_liger = try_time("Liger", lambda: liger_step(d, q, kl_loss, ce_loss))
        if t_liger is not None:
            print(f"  Liger-Kernel on dense target {t_liger:.3f} ms -> kernel speed-up x{t_liger / t_kernel:.1f}")


@pytest.mark.parametrize("vocab", VOCABS)
def test_fusion_loss_launch_sweep(vocab):
    d = make_inputs(N_ROWS, vocab)
    t_copy = cuda_time_ms(lambda: torch.empty_like(d["logits"]).copy_(d["logits"]))
    print(f"\n[{torch.cuda.get_device_name()}] launch sweep, N={N_ROWS} V={vocab} bf16 (copy floor {t_copy:.3f} ms)")
    for block_v, num_warps in SWEEP:
        t = cuda_time_ms(lambda: kernel_step(d, d["logits"], block_v=block_v, num_warps=num_warps))
        print(f"  BLOCK_V={block_v:6d} num_warps={num_warps:2d}: {t:.3f} ms ({100 * t_copy / t:.0f}% of floor)")


@pytest.mark.parametrize("vocab", VOCABS)
def test_teacher_topk_kernel(benchmark, vocab):
    d = make_inputs(N_ROWS, vocab)
    logits, labels = d["logits"], d["labels"]

    def torch_version():
        z = logits.float()
        values, ids = torch.topk(z, K, dim=-1)
        lse = torch.logsumexp(z, dim=-1)
        ce = torch.where(labels != -100, lse - z.gather(1, labels.clamp_min(0)[:, None])[:, 0], 0.0)
        return ids.int(), values, lse, ce

    t_kernel = cuda_time_ms(lambda: teacher_topk_rows_triton(logits, labels, K))
    t_torch = try_time("torch topk", torch_version)
    t_read = N_ROWS * vocab * logits.element_size() / 1e6  # bytes / 1e6 -> ms at 1 GB/s
    benchmark.pedantic(lambda: (teacher_topk_rows_triton(logits, labels, K), torch.cuda.synchronize()),
                       rounds=5, iterations=1)
    print(f"\n[{torch.cuda.get_device_name()}] teacher top-k, N={N_ROWS} V={vocab} bf16 k={K}")
    print(f"  kernel {t_kernel:.3f} ms ({t_read / t_kernel:.0f} GB/s over one read of the logits)")
    if t_torch is not None:
        print(f"  torch topk + logsumexp + gather {t_torch:.3f} ms -> kernel speed-up x{t_torch / t_kernel:.1f}")
