"""TokenizerProfile on real tokenizers: kind, marker, exact token bytes, dummy prefix."""
from __future__ import annotations

import pickle
import time

import numpy as np
import pytest

from fusekernels.tokenization.profile import TokenizerProfile, byte_alphabet

FAST = ["mistral-v1", "mistral-v3", "gpt2", "qwen", "llama3", "smollm2", "tekken"]
EXPECTED_KIND = {"mistral-v1": ("sentencepiece", "▁", "always"), "mistral-v3": ("sentencepiece", "▁", "always"),
                 "gpt2": ("byte_level", "Ġ", "none"), "qwen": ("byte_level", "Ġ", "none"),
                 "llama3": ("byte_level", "Ġ", "none"), "smollm2": ("byte_level", "Ġ", "none"),
                 "tekken": ("byte_level", "Ġ", "none")}


def test_byte_alphabet_is_a_bijection():
    table = byte_alphabet()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("a")] == "a"


@pytest.mark.parametrize("name", FAST)
def test_kind_marker_and_dummy_prefix(profile, name):
    p = profile(name)
    assert (p.kind, p.marker, p.dummy_prefix) == EXPECTED_KIND[name]
    assert p.vocab_size == len(p.tokens) == len(p.token_bytes) == p.byte_lengths.shape[0]
    assert p.byte_lengths.dtype == np.int32 and p.is_special.dtype == bool
    assert "eos" in p.special_ids and p.is_special[p.special_ids["eos"]]
    assert p.token_bytes[p.special_ids["eos"]] == b""  # specials stand for no text


@pytest.mark.parametrize("name", FAST)
def test_encoded_text_bytes_round_trip(profile, tokenizer, texts, name):
    tok, p = tokenizer(name), profile(name)
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False)
        data = p.sequence_bytes(ids)
        start = p.text_start(ids, text)
        assert data[start:] == text.encode("utf-8"), (name, text[:40])
        if p.dummy_prefix == "always":
            assert start == 1 and data[:1] == b" "  # the SPM dummy prefix, accounted for
        else:
            assert start == 0


def test_spm_byte_fallback_and_marker_bytes(profile, tokenizer):
    p, tok = profile("mistral-v1"), tokenizer("mistral-v1")
    nl = p.token_to_id["<0x0A>"]
    assert p.token_bytes[nl] == b"\n" and p.is_byte_fallback[nl]
    assert p.token_bytes[p.token_to_id["▁the"]] == b" the"
    assert int(p.is_byte_fallback.sum()) == 256
    # bytes_to_id prefers the regular piece over the <0xNN> duplicate of the same byte.
    assert p.bytes_to_id[b" "] == p.token_to_id["▁"]
    # A character missing from the vocabulary falls back to its UTF-8 bytes, split over tokens.
    ids = tok.encode("\U0001F99C", add_special_tokens=False)
    assert any(p.is_byte_fallback[i] for i in ids)
    assert p.sequence_bytes(ids)[p.text_start(ids):] == "\U0001F99C".encode()


def test_byte_level_tokens_decode_through_alphabet(profile):
    p = profile("gpt2")
    assert p.token_bytes[p.token_to_id["Ġworld"]] == b" world"
    assert p.token_bytes[p.token_to_id["Ċ"]] == b"\n"
    # A token holding half of a CJK character: raw bytes, not valid UTF-8 on its own.
    half = p.token_bytes[p.token_to_id["ä½"]]
    assert half == "你".encode()[:2]


def test_text_start_resolves_ambiguity_with_text(profile, tokenizer):
    p = profile("mistral-v1")
    tok = tokenizer("mistral-v1")
    ids = tok.encode(" spaced", add_special_tokens=False)
    # "always": a space is inserted even when the text starts with one.
    assert p.sequence_bytes(ids) == b"  spaced" and p.text_start(ids, " spaced") == 1


def test_profile_is_cached_and_picklable(tokenizer, profile):
    tok = tokenizer("gpt2")
    assert TokenizerProfile.from_tokenizer(tok) is TokenizerProfile.from_tokenizer(tok)
    p = profile("gpt2")
    _ = p.token_to_id
    clone = pickle.loads(pickle.dumps(p))
    assert clone.tokens == p.tokens and clone.token_bytes == p.token_bytes
    assert np.array_equal(clone.byte_lengths, p.byte_lengths) and clone._token_to_id is None


def test_qwen_profile_builds_in_seconds(tokenizer):
    tok = tokenizer("qwen")
    start = time.perf_counter()
    p = TokenizerProfile.from_tokenizer(tok, cache=False)
    elapsed = time.perf_counter() - start
    assert p.vocab_size > 150_000
    assert elapsed < 10.0, f"profile of a {p.vocab_size} vocabulary took {elapsed:.1f} s"


def test_bad_ids_raise_named_errors(profile):
    p = profile("gpt2")
    with pytest.raises(ValueError, match="ids must not be empty"):
        p.check_ids([])
    with pytest.raises(ValueError, match="outside"):
        p.check_ids([0, p.vocab_size])
    with pytest.raises(ValueError, match="outside"):
        p.check_ids([-1])
    with pytest.raises(ValueError, match="integer"):
        p.check_ids([0.5])
    with pytest.raises(ValueError, match="1-D"):
        p.check_ids([[1, 2]])


@pytest.mark.slow
def test_gemma_262k_profile(tokenizer, texts):
    tok = tokenizer("gemma3")
    start = time.perf_counter()
    p = TokenizerProfile.from_tokenizer(tok, cache=False)
    assert time.perf_counter() - start < 10.0
    assert (p.kind, p.marker, p.dummy_prefix) == ("sentencepiece", "▁", "none")
    assert p.vocab_size == 262144
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False)
        assert p.sequence_bytes(ids) == text.encode("utf-8")


def test_assets_report_missing_packages_clearly():
    from fusekernels.tokenization import assets

    with pytest.raises(assets.AssetUnavailable, match="not installed"):
        assets.package_file("no_such_asset_package_xyz", "data/file.bin")
    with pytest.raises(ValueError, match="name must be one of"):
        assets.load_tokenizer("bert-base")


def test_cached_tokenizer_equals_fresh_conversion(tokenizer, texts):
    from fusekernels.tokenization import assets

    cached = tokenizer("gpt2")  # reloaded from the cache directory after the first build
    path = assets.package_file("whisper", "assets/gpt2.tiktoken", pip_name="openai-whisper")
    fresh = assets._tiktoken_tokenizer(path, assets.GPT2_PATTERN, ["<|endoftext|>"], eos="<|endoftext|>")
    assert len(cached) == len(fresh) and cached.eos_token_id == fresh.eos_token_id
    for text in texts:
        assert cached.encode(text, add_special_tokens=False) == fresh.encode(text, add_special_tokens=False)


def _fast_tokenizer(model, pre_tokenizer):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(model)
    tk.pre_tokenizer = pre_tokenizer
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]")


def test_wordpiece_and_other_kinds():
    from tokenizers import models, pre_tokenizers

    pieces = ["[UNK]", "hello", "world", "a", "b", "-", "ok", "你", "好", "un", "##believ", "##ably"]
    pieces += [f"##x{i}" for i in range(120)]
    vocab = {p: i for i, p in enumerate(pieces)}
    wp = TokenizerProfile.from_tokenizer(_fast_tokenizer(models.WordPiece(vocab, unk_token="[UNK]"),
                                                         pre_tokenizers.BertPreTokenizer()))
    assert (wp.kind, wp.marker, wp.dummy_prefix) == ("wordpiece", "", "none")
    assert wp.token_bytes[vocab["##believ"]] == b"believ"  # continuation: no space, prefix dropped
    alphabet = ["[UNK]", "H", "e", "l", "o", " ", "w", "r", "d", "\n", "a", "-", "b", "你", "好", "k"]
    chars = {c: i for i, c in enumerate(alphabet)}
    other = TokenizerProfile.from_tokenizer(_fast_tokenizer(models.WordLevel(chars, unk_token="[UNK]"),
                                                            pre_tokenizers.Split("", "isolated")))
    assert (other.kind, other.marker) == ("other", "")
    assert other.token_bytes[chars["你"]] == "你".encode()
