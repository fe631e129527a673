"""Data pipeline and merge benchmarks, each against its baseline in the same run.

Run: python -m pytest benchmarks/bench_pipeline.py -q -s

1. VaRM merge of 3 target checkpoints + the base (each 16 tensors of 1024 x 4096 fp32, 256 MiB):
   ``merge_models`` (streaming from safetensors, 64 MiB output shards) vs the straightforward
   way (``safetensors.torch.load_file`` of all four state dicts, then the same per-tensor
   float32 arithmetic, one ``save_file`` of the result). Each runs in a fresh subprocess; reported: wall time
   and peak resident memory (``VmHWM``). Both outputs are compared tensor by tensor.
2. Storage of the teacher top-k (``extract_teacher_topk`` columns: int32 ids, float16 logits,
   float32 metric) vs the published layout (nested Python lists per position: int64 ids, float64
   logits), both written with ``Dataset.save_to_disk``: bytes per token position, k = 10.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

N_TENSORS, SHAPE, N_TARGETS = 16, (1024, 4096), 3

_NAIVE = textwrap.dedent("""
    import sys, torch
    from safetensors.torch import load_file, save_file
    base = load_file(sys.argv[1])
    targets = [load_file(p) for p in sys.argv[2:-1]]
    merged = {}
    for key, ref in base.items():
        v = torch.tensor([float((t[key].float() - ref.float()).square_().sum()) / ref.numel() for t in targets])
        w = v / v.sum()
        merged[key] = sum(float(wi) * t[key].float() for wi, t in zip(w, targets)).to(ref.dtype)
    save_file(merged, sys.argv[-1])
""")

_STREAMING = textwrap.dedent("""
    import sys
    from fusekernels.pipeline.merge import merge_models
    merge_models(sys.argv[2:-1], sys.argv[-1], base=sys.argv[1], max_shard_size=64 * 1024**2, progress=False)
""")

# VmHWM (peak RSS of this address space), not ru_maxrss: Linux carries ru_maxrss over from the
# forking parent (pytest, which built the checkpoints in memory) across exec.
_REPORT = "print('MAXRSS', [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])"


def _run(script: str, args: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS MiB) of ``script`` in a fresh interpreter."""
    code = script + "\n" + _REPORT
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-2000:]
    rss_kib = int(done.stdout.split("MAXRSS")[-1].split()[0])
    return seconds, rss_kib / 1024


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("merge")
    gen = torch.Generator().manual_seed(0)
    base = {f"layers.{i}.weight": torch.randn(SHAPE, generator=gen) for i in range(N_TENSORS)}
    save_file(base, str(root / "base.safetensors"))
    paths = []
    for m in range(N_TARGETS):
        target = {k: v + (0.01 * (m + 1)) * torch.randn(SHAPE, generator=gen) for k, v in base.items()}
        save_file(target, str(root / f"target{m}.safetensors"))
        paths.append(str(root / f"target{m}.safetensors"))
    return root, str(root / "base.safetensors"), paths


def test_varm_merge_streaming_vs_load_all(checkpoints):
    from fusekernels.pipeline.merge import SafetensorsCheckpoint

    root, base, targets = checkpoints
    size_mib = N_TENSORS * SHAPE[0] * SHAPE[1] * 4 / 2**20
    _, floor_rss = _run("import torch, safetensors.torch, fusekernels.pipeline.merge", [])
    naive_s, naive_rss = _run(_NAIVE, [base, *targets, str(root / "naive.safetensors")])
    stream_s, stream_rss = _run(_STREAMING, [base, *targets, str(root / "streamed")])
    with SafetensorsCheckpoint(root / "naive.safetensors") as a, SafetensorsCheckpoint(root / "streamed") as b:
        for key in a.keys():
            torch.testing.assert_close(a.get(key), b.get(key), rtol=1e-5, atol=1e-6)
    print(f"\nVaRM merge, {N_TARGETS} targets + base, {size_mib:.0f} MiB per checkpoint (fp32)")
    print(f"  load-all baseline : {naive_s:6.2f} s, peak RSS {naive_rss:7.0f} MiB")
    print(f"  streaming merge   : {stream_s:6.2f} s, peak RSS {stream_rss:7.0f} MiB")
    print(f"  interpreter + torch alone: peak RSS {floor_rss:.0f} MiB; above it: load-all "
          f"{naive_rss - floor_rss:.0f} MiB, streaming {stream_rss - floor_rss:.0f} MiB "
          f"({(naive_rss - floor_rss) / (stream_rss - floor_rss):.1f}x less)")
    print(f"  ratio             : time {naive_s / stream_s:.2f}x, peak RSS {naive_rss / stream_rss:.2f}x less")


def test_topk_storage_vs_published_layout(tmp_path):
    import datasets

    rng = np.random.default_rng(0)
    n_seq, length, k = 64, 512, 10
    ids = rng.integers(0, 32000, size=(n_seq, length, k))
    logits = -np.sort(-rng.normal(scale=3, size=(n_seq, length, k)), axis=-1)
    ce = rng.uniform(1, 3, size=(n_seq, length))
    ours = datasets.Dataset.from_dict(
        {"input_ids": [rng.integers(0, 32000, length).astype(np.int32) for _ in range(n_seq)],
         "topk_ids": list(ids.astype(np.int32)), "topk_logits": list(logits.astype(np.float16)),
         "metric_ce": ce.mean(1).astype(np.float32), "per_step_metric_ce": list(ce.astype(np.float32))},
        features=datasets.Features({"input_ids": datasets.List(datasets.Value("int32")),
                                    "topk_ids": datasets.Array2D((None, k), "int32"),
                                    "topk_logits": datasets.Array2D((None, k), "float16"),
                                    "metric_ce": datasets.Value("float32"),
                                    "per_step_metric_ce": datasets.List(datasets.Value("float32"))}))
    published = datasets.Dataset.from_dict(
        {"input_ids": [rng.integers(0, 32000, length).tolist() for _ in range(n_seq)],
         "per_step_indices": ids.tolist(), "per_step_logits": logits.tolist(),
         "metric_ce": ce.mean(1).tolist(), "per_step_metric_ce": ce.tolist()})
    sizes = {}
    for name, ds in (("fusekernels", ours), ("published", published)):
        ds.save_to_disk(str(tmp_path / name))
        sizes[name] = sum(p.stat().st_size for p in (tmp_path / name).glob("*.arrow")) / (n_seq * length)
    print(f"\nteacher top-k storage, k={k}, bytes per token position (ids + logits + input id + per-token CE)")
    print(f"  published layout (int64 / float64 lists): {sizes['published']:.1f}")
    print(f"  fusekernels (int32 / float16 arrays)     : {sizes['fusekernels']:.1f}")
    print(f"  ratio: {sizes['published'] / sizes['fusekernels']:.2f}x smaller")
    print(json.dumps({k: round(v, 1) for k, v in sizes.items()}))
    assert sizes["fusekernels"] < sizes["published"]
