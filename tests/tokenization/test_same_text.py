"""Both sequences must tokenize the same text: byte-span and compatible mode refuse two texts."""
from __future__ import annotations

import numpy as np
import pytest

from fusekernels.tokenization.byte_span import (
    byte_span_align,
    byte_span_align_batch,
    byte_span_positions,
    check_same_text,
)
from fusekernels.tokenization.compat import compat_align, compat_align_batch
from fusekernels.tokenization.profile import TokenizerProfile
from tests.tokenization.helpers import teacher_topk

PAIRS = [("mistral-v1", "gpt2"), ("gpt2", "mistral-v1"), ("qwen", "llama3"), ("mistral-v3", "smollm2"),
         ("tekken", "mistral-v1"), ("llama3", "qwen")]


def _encode(tokenizer, name, text):
    return np.array(tokenizer(name).encode(text, add_special_tokens=False))


@pytest.mark.parametrize("base_name,blend_name", [("mistral-v1", "gpt2"), ("qwen", "mistral-v3")])
@pytest.mark.parametrize("align", ["byte_span", "compat"])
def test_different_texts_raise_with_both_lengths(tokenizer, profile, base_name, blend_name, align):
    base, blend = profile(base_name), profile(blend_name)
    b, a = _encode(tokenizer, base_name, "Hello world"), _encode(tokenizer, blend_name, "Goodbye moon")
    tid, tlg = teacher_topk(a, blend.vocab_size)
    run = byte_span_align if align == "byte_span" else compat_align
    for check in ("length", "bytes"):
        with pytest.raises(ValueError, match=r"base_ids covers 11 bytes and blend_ids 12 bytes"):
            run(b, a, tid, tlg, base, blend, check=check)
    assert run(b, a, tid, tlg, base, blend, check="none").ids.shape[0] == len(b)


@pytest.mark.parametrize("align", ["byte_span", "compat"])
def test_equal_length_texts_need_the_bytes_check(tokenizer, profile, align):
    base, blend = profile("mistral-v1"), profile("gpt2")
    b, a = _encode(tokenizer, "mistral-v1", "Hello world"), _encode(tokenizer, "gpt2", "Hello moon!")
    tid, tlg = teacher_topk(a, blend.vocab_size)
    run = byte_span_align if align == "byte_span" else compat_align
    run(b, a, tid, tlg, base, blend)  # 11 bytes each: the default length check cannot tell
    with pytest.raises(ValueError, match=r"differ at byte 6 of 11 \(base_ids\) / 11 \(blend_ids\).*b'world'.*b'moon!'"):
        run(b, a, tid, tlg, base, blend, check="bytes")


def test_positions_check_and_bad_check_value(tokenizer, profile):
    base, blend = profile("gpt2"), profile("mistral-v1")
    b, a = _encode(tokenizer, "gpt2", "one text"), _encode(tokenizer, "mistral-v1", "another text")
    with pytest.raises(ValueError, match="base_ids covers 8 bytes and blend_ids 12 bytes"):
        byte_span_positions(b, a, base, blend)
    with pytest.raises(ValueError, match="check must be one of"):
        byte_span_positions(b, b, base, base, check="exact")
    with pytest.raises(ValueError, match="check must be one of"):
        byte_span_align_batch([], base, blend, check="exact")
    with pytest.raises(ValueError, match="check must be one of"):
        compat_align_batch([], base, blend, check="exact")


@pytest.mark.parametrize("batch", [byte_span_align_batch, compat_align_batch])
def test_batch_names_the_bad_item(tokenizer, profile, texts, batch):
    base, blend = profile("qwen"), profile("llama3")
    items = []
    for seed, text in enumerate(texts[:4]):
        b, a = _encode(tokenizer, "qwen", text), _encode(tokenizer, "llama3", text)
        items.append((b, a, *teacher_topk(a, blend.vocab_size, seed=seed)))
    assert len(batch(items, base, blend)) == 4
    b = _encode(tokenizer, "qwen", texts[2] + " and more")
    items[2] = (b, *items[2][1:])
    extra = len(" and more".encode())
    want = len(texts[2].encode())
    message = rf"^items\[2\]: base_ids .* covers {want + extra} bytes and blend_ids {want} bytes"
    with pytest.raises(ValueError, match=message):
        batch(items, base, blend)
    assert len(batch(items, base, blend, check="none")) == 4


@pytest.mark.parametrize("base_name,blend_name", PAIRS)
def test_real_pairs_pass_every_check_with_special_tokens(tokenizer, profile, texts, base_name, blend_name):
    """Special tokens (EOS appended to one side, BOS to the other) span 0 bytes, as in the offsets."""
    base, blend = profile(base_name), profile(blend_name)
    for text in texts:
        b, a = _encode(tokenizer, base_name, text), _encode(tokenizer, blend_name, text)
        b_eos = np.r_[b, base.special_ids["eos"]]
        a_bos = np.r_[blend.special_ids.get("bos", blend.special_ids["eos"]), a]
        for check in ("length", "bytes", "prefix"):
            for bb, aa in ((b, a), (b_eos, a), (b, a_bos), (b_eos, a_bos)):
                assert check_same_text(bb, aa, base, blend, text=text, check=check) == (
                    base.text_start(bb, text), blend.text_start(aa, text))


def test_truncated_sequence_needs_the_prefix_check(tokenizer, profile, texts):
    base, blend = profile("mistral-v1"), profile("gpt2")
    text = max(texts, key=len)
    b, a = _encode(tokenizer, "mistral-v1", text), _encode(tokenizer, "gpt2", text)
    tid, tlg = teacher_topk(a, blend.vocab_size)
    cut = b[: len(b) // 2]  # the base model's max_length cut the text
    with pytest.raises(ValueError, match="check='prefix' accepts a sequence truncated"):
        byte_span_align(cut, a, tid, tlg, base, blend, text=text)
    # The shared prefix aligns exactly as in the whole sequences.
    whole = byte_span_positions(b, a, base, blend, text=text)
    part = byte_span_positions(cut, a, base, blend, text=text, check="prefix")
    assert np.array_equal(part, whole[: len(cut)]) and (part >= 0).sum() > len(cut) // 2
    compat_align(cut, a, tid, tlg, base, blend, check="prefix")
    other = _encode(tokenizer, "mistral-v1", "#Something else entirely")
    with pytest.raises(ValueError, match="differ at byte 0"):
        check_same_text(other, a, base, blend, text=text, check="prefix")


def test_literal_special_token_in_text_is_refused(tokenizer, profile):
    # "</s>" in the text becomes Mistral's EOS (0 bytes) but stays 4 text bytes for GPT-2: the byte
    # offsets after it disagree, so the pair is refused rather than silently misaligned.
    base, blend = profile("mistral-v1"), profile("gpt2")
    text = "a </s> b"
    b, a = np.array(tokenizer("mistral-v1").encode(text, add_special_tokens=False)), _encode(tokenizer, "gpt2", text)
    assert base.special_ids["eos"] in b.tolist()
    with pytest.raises(ValueError, match="special tokens count as 0 bytes"):
        check_same_text(b, a, base, blend, text=text)


def test_unknown_token_is_a_lower_bound(tokenizer, profile):
    base, blend = profile("mistral-v1"), profile("gpt2")
    unk = base.special_ids["unk"]
    a = _encode(tokenizer, "gpt2", "Hello wonderful world")
    b = np.r_[_encode(tokenizer, "mistral-v1", "Hello"), unk, _encode(tokenizer, "mistral-v1", "world")]  # "▁world"
    for check in ("length", "bytes"):
        check_same_text(b, a, base, blend, check=check)  # unk stands for " wonderful": >= 1 byte
    long_text = _encode(tokenizer, "mistral-v1", "Hello wonderful world and then some")
    with pytest.raises(ValueError, match=r"at least 36 bytes \(1 unknown token\(s\)\) and blend_ids 21 bytes"):
        check_same_text(np.r_[long_text, unk], a, base, blend)
    with pytest.raises(ValueError, match="differ at byte 0"):
        check_same_text(np.r_[_encode(tokenizer, "mistral-v1", "Jello"), unk], a, base, blend, check="bytes")


def _unless_space_profile() -> TokenizerProfile:
    """A tiny SentencePiece profile whose dummy prefix is added unless the text starts with a space."""
    tokens = ["<unk>", "▁hello", "▁world", "hello"]
    data = [b"", b" hello", b" world", b"hello"]
    return TokenizerProfile(name="spm-unless-space", kind="sentencepiece", marker="▁", tokens=tokens,
                            token_bytes=data, byte_lengths=np.array([len(x) for x in data], dtype=np.int32),
                            is_special=np.array([True, False, False, False]),
                            is_byte_fallback=np.zeros(4, dtype=bool), dummy_prefix="unless_space",
                            special_ids={"unk": 0})


def test_ambiguous_dummy_prefix_is_resolved_by_the_other_length(tokenizer, profile):
    base, blend = _unless_space_profile(), profile("gpt2")
    b = np.array([1, 2])  # "▁hello▁world": " hello world" or, with an inserted space, "hello world"
    for text, start in ((" hello world", 0), ("hello world", 1)):
        a = _encode(tokenizer, "gpt2", text)
        assert check_same_text(b, a, base, blend) == (start, 0)
        assert check_same_text(b, a, base, blend, check="bytes") == (start, 0)
        assert check_same_text(b, a, base, blend, text=text, check="bytes") == (start, 0)
        pos = byte_span_positions(b, a, base, blend)
        assert pos.tolist() == [0, 1]  # both words align with or without the text
    a = _encode(tokenizer, "gpt2", "hello world!!")
    with pytest.raises(ValueError, match=r"base_ids covers 11 or 12 bytes \(dummy-prefix space unknown"):
        check_same_text(b, a, base, blend)


def test_wordpiece_bytes_are_not_checked(tokenizer, profile):
    # WordPiece loses spaces: "hello world" has 10 token bytes, so no length can be trusted.
    tokens = ["[UNK]", "hello", "world"]
    data = [b"", b"hello", b"world"]
    wordpiece = TokenizerProfile(name="wp", kind="wordpiece", marker="", tokens=tokens, token_bytes=data,
                                 byte_lengths=np.array([0, 5, 5], dtype=np.int32),
                                 is_special=np.array([True, False, False]), is_byte_fallback=np.zeros(3, dtype=bool))
    a = _encode(tokenizer, "gpt2", "hello world")
    assert check_same_text([1, 2], a, wordpiece, profile("gpt2"), check="bytes") == (0, 0)
