"""Byte-span mode on real tokenizer pairs: exact spans, exact id map, coverage vs compat mode."""
from __future__ import annotations

import editdistance
import numpy as np
import pytest

from fusekernels.tokenization.byte_span import (
    ByteSpanMap,
    build_byte_span_map,
    byte_span_align,
    byte_span_align_batch,
    byte_span_positions,
    decoded_token_strings,
)
from fusekernels.tokenization.compat import compat_align
from tests.tokenization.helpers import teacher_topk

PAIRS = [("mistral-v1", "gpt2"), ("gpt2", "mistral-v1"), ("qwen", "llama3"), ("mistral-v3", "smollm2"),
         ("tekken", "mistral-v1"), ("llama3", "qwen")]


def _naive_positions(base, blend, b, a, text):
    """Two-pointer walk over Python ints (independent of the vectorised code)."""
    def spans(p, ids):
        skip = p.text_start(ids, text)
        out, pos = [], 0
        for i in ids:
            length = len(p.token_bytes[i])
            s, e = max(pos - skip, 0), max(pos + length - skip, 0)
            out.append((s, e))
            pos += length
        return out
    bs, as_ = spans(base, b), spans(blend, a)
    from collections import Counter
    ca, cb = Counter(as_), Counter(bs)
    where = {span: i for i, span in enumerate(as_)}
    return np.array([where[s] if ca[s] == 1 and cb[s] == 1 else -1 for s in bs])


def _naive_end_positions(base, blend, b, a, text):
    """End-offset rule over Python ints: one blending token (same emptiness) ends where j ends."""
    def ends(p, ids):
        skip = p.text_start(ids, text)
        out, pos = [], 0
        for i in ids:
            length = len(p.token_bytes[i])
            out.append((max(pos + length - skip, 0), max(pos + length - skip, 0) > max(pos - skip, 0)))
            pos += length
        return out
    be, ae = ends(base, b), ends(blend, a)
    from collections import Counter
    ca, cb = Counter(ae), Counter(be)
    where = {key: i for i, key in enumerate(ae)}
    return np.array([where[key] if ca[key] == 1 and cb[key] == 1 else -1 for key in be])


def _encode(tokenizer, name, text):
    return np.array(tokenizer(name).encode(text, add_special_tokens=False))


@pytest.mark.parametrize("base_name,blend_name", PAIRS)
def test_positions_cover_identical_bytes(tokenizer, profile, texts, base_name, blend_name):
    base, blend = profile(base_name), profile(blend_name)
    for text in texts:
        b, a = _encode(tokenizer, base_name, text), _encode(tokenizer, blend_name, text)
        pos = byte_span_positions(b, a, base, blend, text=text)
        assert np.array_equal(pos, _naive_positions(base, blend, b, a, text))
        data = text.encode("utf-8")
        bstart = np.cumsum([0] + [len(base.token_bytes[i]) for i in b]) - base.text_start(b, text)
        for j in np.flatnonzero(pos >= 0):
            i = pos[j]
            lo, hi = max(bstart[j], 0), bstart[j + 1]
            piece = data[lo:hi]
            # The base token, the blending token and the text agree byte for byte
            # (modulo the inserted dummy-prefix space at the very start).
            assert base.token_bytes[b[j]].endswith(piece) and blend.token_bytes[a[i]].endswith(piece)
            assert len(base.token_bytes[b[j]]) - len(piece) <= base.text_start(b, text)
            assert len(blend.token_bytes[a[i]]) - len(piece) <= blend.text_start(a, text)


@pytest.mark.parametrize("base_name,blend_name", PAIRS)
def test_byte_span_teaches_at_least_as_many_positions_as_compat(tokenizer, profile, texts, base_name, blend_name):
    base, blend = profile(base_name), profile(blend_name)
    span_total = compat_total = 0
    for seed, text in enumerate(texts):
        b, a = _encode(tokenizer, base_name, text), _encode(tokenizer, blend_name, text)
        tid, tlg = teacher_topk(a, blend.vocab_size, seed=seed)
        # Exact-bytes id map only (no MinED fill-in): a stricter count, and cheap for 150k vocabularies.
        _, span_mask = byte_span_align(b, a, tid, tlg, base, blend, text=text, return_mask=True,
                                       id_map=build_byte_span_map(base, blend, fallback="none"))
        _, compat_mask = compat_align(b, a, tid, tlg, base, blend, mode="hard", return_mask=True)
        span_total += int(span_mask.sum())
        compat_total += int(compat_mask.sum())
    assert span_total >= compat_total > 0, (span_total, compat_total)


def test_split_characters_and_byte_fallback(tokenizer, profile):
    # GPT-2 splits 你 / 好 into partial-byte tokens, Mistral has them whole: no 1:1 span there,
    # the surrounding words still align.
    base, blend = profile("mistral-v1"), profile("gpt2")
    text = "say 你好 now"
    b, a = _encode(tokenizer, "mistral-v1", text), _encode(tokenizer, "gpt2", text)
    pos = byte_span_positions(b, a, base, blend, text=text)
    toks = base.tokens_of(b)
    assert pos[toks.index("▁say")] == 0  # dummy prefix accounted for
    assert pos[toks.index("▁now")] == len(a) - 1
    assert pos[toks.index("你")] == -1
    # Emoji missing from the SPM vocabulary: 4 <0xNN> pieces vs GPT-2 byte tokens, exact bytes.
    text = "x \U0001F99C y"
    b, a = _encode(tokenizer, "mistral-v1", text), _encode(tokenizer, "gpt2", text)
    pos = byte_span_positions(b, a, base, blend, text=text)
    fallback = [j for j, i in enumerate(b) if base.is_byte_fallback[i]]
    assert fallback, "expected <0xNN> pieces"
    for j in np.flatnonzero(pos >= 0):
        assert base.token_bytes[b[j]].lstrip(b" ") == blend.token_bytes[a[pos[j]]].lstrip(b" ")


def test_special_tokens_align_by_role(tokenizer, profile):
    base, blend = profile("mistral-v1"), profile("qwen")
    text = "The end."
    b = np.r_[_encode(tokenizer, "mistral-v1", text), base.special_ids["eos"]]
    a = np.r_[_encode(tokenizer, "qwen", text), blend.special_ids["eos"]]
    pos = byte_span_positions(b, a, base, blend, text=text)
    assert pos[-1] == len(a) - 1  # both EOS: zero bytes at the end offset
    table = build_byte_span_map(base, blend, fallback="none")
    assert table.ids[blend.special_ids["eos"]] == base.special_ids["eos"]


@pytest.mark.parametrize("base_name,blend_name", [("mistral-v1", "gpt2"), ("gpt2", "mistral-v1")])
def test_id_map_exact_bytes_then_mined(profile, base_name, blend_name):
    base, blend = profile(base_name), profile(blend_name)
    table = build_byte_span_map(base, blend)
    assert table.ids.dtype == np.int32 and table.ids.shape == (blend.vocab_size,)
    exact = np.flatnonzero(table.exact & ~blend.is_special)
    assert exact.size > 10_000
    for i in exact[:: max(1, exact.size // 2000)]:
        assert base.token_bytes[table.ids[i]] == blend.token_bytes[i]
        assert not base.is_special[table.ids[i]]
    # Non-exact: the base token at minimal edit distance over decoded strings, lowest id on ties.
    targets = np.flatnonzero(~base.is_special & (base.byte_lengths > 0))
    target_strings = decoded_token_strings(base, targets.tolist())
    rng = np.random.default_rng(1)
    inexact = np.flatnonzero(~table.exact & ~blend.is_special)
    assert inexact.size > 0
    for i in rng.choice(inexact, size=min(8, inexact.size), replace=False):
        q = decoded_token_strings(blend, [int(i)])[0]
        dists = np.array([editdistance.eval(q, t) for t in target_strings])
        assert table.ids[i] == targets[int(np.argmin(dists))]
    assert build_byte_span_map(base, blend) is table


def test_fallback_none_drops_unmapped(profile):
    base, blend = profile("mistral-v1"), profile("gpt2")
    table = build_byte_span_map(base, blend, fallback="none")
    assert np.array_equal(table.ids >= 0, table.exact)


def test_transfer_semantics(tokenizer, profile):
    base, blend = profile("mistral-v1"), profile("gpt2")
    text = "In the beginning God created the heaven and the earth."
    b, a = _encode(tokenizer, "mistral-v1", text), _encode(tokenizer, "gpt2", text)
    tid, tlg = teacher_topk(a, blend.vocab_size, k=5, seed=3)
    table = build_byte_span_map(base, blend)
    result, mask = byte_span_align(b, a, tid, tlg, base, blend, text=text, return_mask=True)
    pos = byte_span_positions(b, a, base, blend, text=text)
    assert result.ids.shape == (len(b), 5) and result.ids.dtype == np.int32 and result.logits.dtype == np.float32
    for j in range(len(b)):
        c = result.counts[j]
        assert np.all(result.ids[j, c:] == -1) and np.all(np.isneginf(result.logits[j, c:]))
        if not mask[j]:
            assert c == 1 and result.ids[j, 0] == b[j] and result.logits[j, 0] == 1.0
            continue
        expected_ids, expected_logits = [], []
        for blend_id, logit in zip(tid[pos[j]], tlg[pos[j]]):
            mapped = int(table.ids[blend_id])
            if mapped >= 0 and mapped not in expected_ids:
                expected_ids.append(mapped)
                expected_logits.append(logit)
        assert result.ids[j, :c].tolist() == expected_ids
        assert np.array_equal(result.logits[j, :c], np.float32(expected_logits))
    # Nearly every position of plain English aligns 1:1.
    assert mask.mean() > 0.8


def test_batch_equals_single(tokenizer, profile, texts):
    base, blend = profile("qwen"), profile("mistral-v3")
    items = []
    for seed, text in enumerate(texts[:5]):
        b, a = _encode(tokenizer, "qwen", text), _encode(tokenizer, "mistral-v3", text)
        items.append((b, a, *teacher_topk(a, blend.vocab_size, seed=seed), text))
    for item, got in zip(items, byte_span_align_batch(items, base, blend)):
        want = byte_span_align(*item[:4], base, blend, text=item[4])
        assert np.array_equal(got.ids, want.ids) and np.array_equal(got.logits, want.logits)


def test_bad_input(profile):
    base, blend = profile("mistral-v1"), profile("gpt2")
    tid = np.zeros((2, 3), dtype=np.int64)
    tlg = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="topk_ids must have shape"):
        byte_span_align([1], [1, 2, 3], tid, tlg, base, blend)
    with pytest.raises(ValueError, match="topk_logits must have the shape"):
        byte_span_align([1], [1, 2], tid, tlg[:, :2], base, blend)
    with pytest.raises(ValueError, match="blending vocabulary"):
        byte_span_align([1], [1, 2], tid + blend.vocab_size, tlg, base, blend)
    with pytest.raises(ValueError, match="NaN"):
        byte_span_align([1], [1, 2], tid, np.full((2, 3), np.nan, dtype=np.float32), base, blend)
    with pytest.raises(ValueError, match="integer"):
        byte_span_align([1], [1, 2], tid.astype(np.float32), tlg, base, blend)
    with pytest.raises(ValueError, match="base_ids must not be empty"):
        byte_span_align([], [1, 2], tid, tlg, base, blend)
    with pytest.raises(ValueError, match="fallback"):
        build_byte_span_map(base, blend, fallback="guess")


@pytest.mark.parametrize("base_name,blend_name", [("mistral-v1", "gpt2"), ("tekken", "mistral-v1"), ("qwen", "llama3")])
def test_end_match_extends_span_match(tokenizer, profile, texts, base_name, blend_name):
    base, blend = profile(base_name), profile(blend_name)
    n_span = n_end = 0
    for text in texts:
        b, a = _encode(tokenizer, base_name, text), _encode(tokenizer, blend_name, text)
        b = np.r_[b, base.special_ids["eos"]]
        a = np.r_[a, blend.special_ids["eos"]]
        span = byte_span_positions(b, a, base, blend, text=text)
        end = byte_span_positions(b, a, base, blend, text=text, match="end")
        assert np.array_equal(end, _naive_end_positions(base, blend, b, a, text))
        assert np.all(end[span >= 0] == span[span >= 0])  # every span match is an end match
        assert end[-1] == len(a) - 1 and end[-2] == len(a) - 2  # EOS <-> EOS, last word <-> last word
        n_span += int((span >= 0).sum())
        n_end += int((end >= 0).sum())
    assert n_end > n_span
    with pytest.raises(ValueError, match="match"):
        byte_span_positions(b, a, base, blend, match="start")


def test_prefix_fallback_is_longest_byte_prefix(profile):
    base, blend = profile("mistral-v1"), profile("qwen")
    table = build_byte_span_map(base, blend, fallback="prefix")
    inexact = np.flatnonzero(~table.exact & ~blend.is_special)
    assert inexact.size > 10_000 and np.all(table.ids[inexact] >= 0)  # single bytes always exist
    by_bytes = base.bytes_to_id
    for i in inexact[:: max(1, inexact.size // 500)]:
        data, mapped = blend.token_bytes[i], base.token_bytes[table.ids[i]]
        assert data.startswith(mapped) and len(mapped) < len(data)
        assert not any(data[:cut] in by_bytes for cut in range(len(mapped) + 1, len(data)))


def test_byte_span_map_npz_round_trip(tmp_path, profile):
    base, blend = profile("mistral-v1"), profile("gpt2")
    table = build_byte_span_map(base, blend, fallback="prefix")
    table.save_npz(tmp_path / "span.npz")
    back = ByteSpanMap.load_npz(tmp_path / "span.npz", base, blend)
    assert np.array_equal(back.ids, table.ids) and np.array_equal(back.exact, table.exact)
    assert back.fallback == "prefix"
    with pytest.raises(ValueError, match="other tokenizers"):
        ByteSpanMap.load_npz(tmp_path / "span.npz", blend, base)


@pytest.mark.slow
@pytest.mark.parametrize("base_name,blend_name", [("gemma3", "qwen"), ("mistral-v1", "gemma3")])
def test_gemma_262k_pairs(tokenizer, profile, texts, base_name, blend_name):
    test_positions_cover_identical_bytes(tokenizer, profile, texts, base_name, blend_name)
    test_byte_span_teaches_at_least_as_many_positions_as_compat(tokenizer, profile, texts, base_name, blend_name)
