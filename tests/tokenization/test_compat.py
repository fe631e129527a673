"""Compatible mode on real tokenizer pairs == the pure-Python reference of the published code."""
from __future__ import annotations

import numpy as np
import pytest

from fusekernels.tokenization.compat import compat_align, compat_align_batch, compat_tables
from fusekernels.tokenization.vocab_map import build_vocab_map
from tests.reference import fusellm_spec as ref
from tests.tokenization.helpers import teacher_topk

HARD_PAIRS = [("mistral-v1", "gpt2"), ("gpt2", "mistral-v1"), ("qwen", "llama3"), ("mistral-v3", "smollm2"),
              ("tekken", "mistral-v1")]


def _reference(base, blend, b, a, tid, tlg, mode, vocab_map=None):
    bt, at = base.tokens_of(b), blend.tokens_of(a)
    groups = ref.dtw_base_to_blending(at, bt, blend.marker, base.marker)
    ids, logits = ref.transfer_topk(bt, at, groups, tid.tolist(), tlg.tolist(), blend.tokens, base.tokens,
                                    blend_marker=blend.marker, base_marker=base.marker, mode=mode,
                                    vocab_map=vocab_map, byte_level_blend=blend.kind == "byte_level")
    return groups, ids, logits


def _expected_mask(base, blend, b, a, groups, ids, mode, vocab_map):
    """Teacher positions from the spec text: 1:1 group, the step matches, >= 1 id left."""
    mask = []
    for j, group in enumerate(groups):
        ok = False
        if len(group) == 1:
            bt = base.tokens[b[j]]
            at = ref.replace_marker(blend.tokens[a[group[0]]], blend.marker, base.marker)
            if blend.kind == "byte_level" and j == 0 and bt.startswith(base.marker) and not at.startswith(base.marker):
                at = base.marker + at
            ok = at == bt or (mode == "soft" and vocab_map.get(at) == bt)
        mask.append(ok and len(ids[j]) > 0)
    return np.array(mask)


def _check_pair(tokenizer, profile, texts, base_name, blend_name, mode):
    base_tok, blend_tok = tokenizer(base_name), tokenizer(blend_name)
    base, blend = profile(base_name), profile(blend_name)
    vm = build_vocab_map(base, blend) if mode == "soft" else None
    vm_dict = vm.to_dict() if vm is not None else None
    taught = 0
    for seed, text in enumerate(texts):
        b = np.array(base_tok.encode(text, add_special_tokens=False))
        a = np.array(blend_tok.encode(text, add_special_tokens=False))
        tid, tlg = teacher_topk(a, blend.vocab_size, seed=seed)
        result, mask = compat_align(b, a, tid, tlg, base, blend, mode=mode, vocab_map=vm, return_mask=True)
        groups, ref_ids, ref_logits = _reference(base, blend, b, a, tid, tlg, mode, vm_dict)
        got_ids, got_logits = result.to_lists()
        assert got_ids == ref_ids, (base_name, blend_name, text[:30])
        assert all(np.array_equal(np.float32(x), np.float32(y)) for x, y in zip(got_logits, ref_logits))
        assert np.array_equal(mask, _expected_mask(base, blend, b, a, groups, ref_ids, mode, vm_dict))
        taught += int(mask.sum())
    assert taught > 0  # real pairs share many tokens: some positions must get the teacher


@pytest.mark.parametrize("base_name,blend_name", HARD_PAIRS)
def test_compat_hard_equals_reference(tokenizer, profile, texts, base_name, blend_name):
    _check_pair(tokenizer, profile, texts, base_name, blend_name, "hard")


def test_compat_soft_equals_reference(tokenizer, profile, texts):
    _check_pair(tokenizer, profile, texts, "mistral-v1", "gpt2", "soft")


@pytest.mark.slow
@pytest.mark.parametrize("base_name,blend_name", [("gpt2", "mistral-v1"), ("qwen", "llama3"), ("llama3", "smollm2")])
def test_compat_soft_equals_reference_more_pairs(tokenizer, profile, texts, base_name, blend_name):
    _check_pair(tokenizer, profile, texts, base_name, blend_name, "soft")


def test_byte_level_first_position_special_case(tokenizer, profile):
    # Base SPM "▁In" at j == 0 vs GPT-2 "In": the published code prepends the marker and matches.
    base, blend = profile("mistral-v1"), profile("gpt2")
    text = "In the beginning"
    b = np.array(tokenizer("mistral-v1").encode(text, add_special_tokens=False))
    a = np.array(tokenizer("gpt2").encode(text, add_special_tokens=False))
    tid, tlg = teacher_topk(a, blend.vocab_size)
    result, mask = compat_align(b, a, tid, tlg, base, blend, mode="hard", return_mask=True)
    assert base.tokens[b[0]] == "▁In" and blend.tokens[a[0]] == "In"
    assert mask[0]


def test_batch_equals_single(tokenizer, profile, texts):
    base, blend = profile("qwen"), profile("llama3")
    items = []
    for seed, text in enumerate(texts):
        b = np.array(tokenizer("qwen").encode(text, add_special_tokens=False))
        a = np.array(tokenizer("llama3").encode(text, add_special_tokens=False))
        items.append((b, a, *teacher_topk(a, blend.vocab_size, seed=seed)))
    batch = compat_align_batch(items, base, blend, mode="hard", threads=2, return_mask=True)
    for item, (result, mask) in zip(items, batch):
        single, single_mask = compat_align(*item, base, blend, mode="hard", return_mask=True)
        assert np.array_equal(result.ids, single.ids) and np.array_equal(result.logits, single.logits)
        assert np.array_equal(mask, single_mask)


def test_tables_are_cached(profile):
    base, blend = profile("mistral-v1"), profile("gpt2")
    assert compat_tables(base, blend, mode="hard") is compat_tables(base, blend, mode="hard")


def test_bad_input(profile):
    base, blend = profile("mistral-v1"), profile("gpt2")
    tid = np.zeros((2, 3), dtype=np.int64)
    tlg = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="base_ids"):
        compat_align([], [1, 2], tid, tlg, base, blend)
    with pytest.raises(ValueError, match="blend_ids"):
        compat_align([1], [1, blend.vocab_size], tid, tlg, base, blend)
    with pytest.raises(ValueError, match="mode"):
        compat_align([1], [1, 2], tid, tlg, base, blend, mode="fuzzy")
    bad = tlg.copy()
    bad[0, 0] = np.nan
    # The same two bytes '"#' in both vocabularies (GPT-2 ids 1, 2), so only the logits are wrong.
    same_text = [base.bytes_to_id[b'"'], base.bytes_to_id[b"#"]]
    with pytest.raises(ValueError, match="NaN"):
        compat_align(same_text, [1, 2], tid, bad, base, blend)
    with pytest.raises(ValueError, match="check must be one of"):
        compat_align(same_text, [1, 2], tid, tlg, base, blend, check="strict")


@pytest.mark.slow
@pytest.mark.parametrize("base_name,blend_name", [("gemma3", "gpt2"), ("mistral-v1", "gemma3")])
def test_compat_hard_gemma_262k(tokenizer, profile, texts, base_name, blend_name):
    _check_pair(tokenizer, profile, texts, base_name, blend_name, "hard")
