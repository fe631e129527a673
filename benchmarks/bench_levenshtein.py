"""Levenshtein on 1M token-like string pairs: levenshtein_batch vs rapidfuzz cpdist and editdistance.

Run: python -m pytest benchmarks/bench_levenshtein.py -q -s

Pairs are drawn from the same vocabularies as bench_mined.py (real Mistral-v1 pieces and Qwen
byte-level tokens when installed, generated token-like strings otherwise; the output says
which), half of them random pairs and half a token against a lightly edited copy of itself
(the near-matches that alignment mostly sees). Lengths are mostly 1-16 code points, with the
vocabularies' longer tokens included.

Baselines, measured in the same run: rapidfuzz's batch API
`process.cpdist(a, b, scorer=Levenshtein.distance, workers=-1)` and a Python loop over
`editdistance.eval` (the published approach). Results must be identical.
"""
from __future__ import annotations

import os
import random
import time

import numpy as np
import pytest

from benchmarks.bench_mined import token_vocabularies
from fusekernels.align import levenshtein_batch

N_PAIRS = 1_000_000


def _edited(rng: random.Random, s: str, alphabet: str) -> str:
    chars = list(s)
    for _ in range(rng.randint(0, 2)):
        op = rng.random()
        pos = rng.randint(0, len(chars))
        if op < 0.4 and pos < len(chars):
            chars[pos] = rng.choice(alphabet)
        elif op < 0.7 and pos < len(chars):
            del chars[pos]
        else:
            chars.insert(pos, rng.choice(alphabet))
    return "".join(chars)


def token_pairs(n: int = N_PAIRS, seed: int = 0) -> tuple[list[str], list[str], str]:
    blend, base, what = token_vocabularies()
    pool = blend + base
    alphabet = "".join(sorted(set("".join(pool[:5000]))))
    rng = random.Random(seed)
    a, b = [], []
    for i in range(n):
        x = rng.choice(pool)
        a.append(x)
        b.append(rng.choice(pool) if i % 2 == 0 else _edited(rng, x, alphabet))
    return a, b, what


@pytest.fixture(scope="module")
def pairs():
    return token_pairs()


def test_levenshtein_batch_1m(benchmark, pairs):
    rapidfuzz = pytest.importorskip("rapidfuzz")
    editdistance = pytest.importorskip("editdistance")
    from rapidfuzz import process
    from rapidfuzz.distance import Levenshtein

    a, b, what = pairs
    ours_out = benchmark.pedantic(lambda: levenshtein_batch(a, b), rounds=5, iterations=1, warmup_rounds=1)
    ours = benchmark.stats.stats.min
    t0 = time.perf_counter()
    levenshtein_batch(a, b, threads=1)
    ours_1t = time.perf_counter() - t0

    rf = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        rf_out = process.cpdist(a, b, scorer=Levenshtein.distance, workers=-1)
        rf = min(rf, time.perf_counter() - t0)
    assert np.array_equal(ours_out, rf_out)

    # CPU time on one thread each, which a loaded machine distorts far less than wall time.
    t0 = time.process_time()
    levenshtein_batch(a, b, threads=1)
    ours_cpu = time.process_time() - t0
    t0 = time.process_time()
    process.cpdist(a, b, scorer=Levenshtein.distance, workers=1)
    rf_cpu = time.process_time() - t0

    t0 = time.perf_counter()
    loop_out = [editdistance.eval(x, y) for x, y in zip(a, b)]
    loop = time.perf_counter() - t0
    assert ours_out.tolist() == loop_out

    lengths = np.array([len(s) for s in a + b])
    print(f"\n[levenshtein] {len(a)} pairs ({what}); mean length {lengths.mean():.1f}, "
          f"max {lengths.max()}; threads available: {os.cpu_count()}; rapidfuzz {rapidfuzz.__version__}")
    print(f"[levenshtein] fusekernels levenshtein_batch: {ours:.3f} s (1 thread: {ours_1t:.3f} s)")
    print(f"[levenshtein] rapidfuzz cpdist (workers=-1): {rf:.3f} s -> speedup {rf / ours:.2f}x")
    print(f"[levenshtein] CPU time, 1 thread each: fusekernels {ours_cpu:.3f} s, rapidfuzz {rf_cpu:.3f} s "
          f"-> speedup {rf_cpu / ours_cpu:.2f}x")
    print(f"[levenshtein] Python loop over editdistance.eval: {loop:.3f} s -> speedup {loop / ours:.1f}x")
