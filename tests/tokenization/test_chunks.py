"""Aligned chunks against an independent pure-Python reference on real tokenizers."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fusekernels.tokenization.chunks import aligned_chunks
from fusekernels.tokenization.profile import TokenizerProfile
from tests.tokenization.conftest import CODE_SAMPLE, MIXED_SAMPLES, load_or_skip

PAIRS = [("mistral-v1", "gpt2"), ("gpt2", "qwen"), ("mistral-v1", "mistral-v1"), ("qwen", "mistral-v1")]


def _text_bytes(profile, ids, text):
    """Byte string of every token with the SentencePiece dummy-prefix space removed."""
    pieces = [profile.token_bytes[i] for i in ids]
    inserted = profile.dummy_prefix == "always" or (profile.dummy_prefix != "none" and not text.startswith(" "))
    if inserted:
        for n, p in enumerate(pieces):
            if p:
                if p.startswith(b" "):
                    pieces[n] = p[1:]
                break
    return pieces


def _reference(student_tok, teacher_tok, text, ce, student, teacher):
    """Chunks by explicit boundary sets and loops (independent of the vectorised code)."""
    s_ids = student_tok(text, add_special_tokens=False)["input_ids"] + [student_tok.eos_token_id]
    t_ids = teacher_tok(text, add_special_tokens=False)["input_ids"] + [teacher_tok.eos_token_id]
    s_b, t_b = _text_bytes(student, s_ids, text), _text_bytes(teacher, t_ids, text)

    def keys(pieces):
        out, pos = [], 0
        for p in pieces:
            pos += len(p)
            out.append((pos, len(p) > 0))
        return out

    sk, tk = keys(s_b), keys(t_b)
    common = [j for j, key in enumerate(sk) if sk.count(key) == 1 and tk.count(key) == 1]
    span, logprob, rate = {}, {}, {}
    for j0, j1 in zip(common, common[1:]):
        i0, i1 = tk.index(sk[j0]), tk.index(sk[j1])
        lp = -sum(ce[u] for u in range(i0, i1))
        nbytes = max(sum(len(s_b[j]) for j in range(j0 + 1, j1 + 1)), 1)
        span[j1 - 1], logprob[j1 - 1] = j1 - j0, lp
        for r in range(j0, j1):
            rate[r] = -lp / nbytes
    return s_ids, t_ids, span, logprob, rate


@pytest.mark.parametrize("student_name,teacher_name", PAIRS)
@pytest.mark.parametrize("text", MIXED_SAMPLES[:4] + [CODE_SAMPLE, "In the beginning God created the heaven."])
def test_chunks_match_reference(student_name, teacher_name, text):
    student_tok, teacher_tok = load_or_skip(student_name), load_or_skip(teacher_name)
    student, teacher = TokenizerProfile.from_tokenizer(student_tok), TokenizerProfile.from_tokenizer(teacher_tok)
    t_ids = teacher_tok(text, add_special_tokens=False)["input_ids"] + [teacher_tok.eos_token_id]
    ce = np.random.default_rng(len(text)).exponential(2.0, len(t_ids))
    s_ids, t_ids, span, logprob, rate = _reference(student_tok, teacher_tok, text, ce, student, teacher)
    got = aligned_chunks(s_ids, t_ids, ce, student, teacher, text=text)
    assert {int(r): int(v) for r, v in enumerate(got.span) if v} == span
    for r, lp in logprob.items():
        assert got.logprob[r] == pytest.approx(lp, rel=1e-5, abs=1e-5)
    for r in range(len(s_ids)):
        if r in rate:
            assert got.nats_per_byte[r] == pytest.approx(rate[r], rel=1e-5)
        else:
            assert math.isnan(got.nats_per_byte[r])
    assert span, "a real text always has chunks"
    # every row from the first common boundary on is covered, and spans tile those rows
    ends = sorted(span)
    assert sum(span.values()) == ends[-1] + 1 - (ends[0] + 1 - span[ends[0]])


def test_same_tokenizer_gives_one_token_chunks():
    tok = load_or_skip("gpt2")
    prof = TokenizerProfile.from_tokenizer(tok)
    ids = tok("one two three", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ce = np.array([1.0, 2.0, 3.0, 0.0])
    got = aligned_chunks(ids, ids, ce, prof, prof)
    assert got.span.tolist() == [1, 1, 1, 0]           # token 0 has no chunk; rows 0..2 predict 1..3
    assert got.logprob.tolist() == [-1.0, -2.0, -3.0, 0.0]


def test_truncated_teacher_and_bad_input():
    student_tok, teacher_tok = load_or_skip("mistral-v1"), load_or_skip("gpt2")
    student, teacher = TokenizerProfile.from_tokenizer(student_tok), TokenizerProfile.from_tokenizer(teacher_tok)
    text = "In the beginning God created the heaven and the earth."
    s_ids = student_tok(text, add_special_tokens=False)["input_ids"] + [student_tok.eos_token_id]
    t_ids = teacher_tok(text, add_special_tokens=False)["input_ids"][:5]
    got = aligned_chunks(s_ids, t_ids, np.ones(5), student, teacher, text=text)
    covered = np.flatnonzero(~np.isnan(got.nats_per_byte))
    assert covered.size and covered.max() < len(s_ids) - 2   # nothing after the truncation
    with pytest.raises(ValueError, match="teacher_token_ce has 4 entries for 5"):
        aligned_chunks(s_ids, t_ids, np.ones(4), student, teacher)
    with pytest.raises(ValueError, match="finite"):
        aligned_chunks(s_ids, t_ids, np.array([1, np.nan, 1, 1, 1.0]), student, teacher)
    with pytest.raises(ValueError, match="same text"):
        other = teacher_tok("Something else entirely", add_special_tokens=False)["input_ids"]
        aligned_chunks(s_ids, other, np.ones(len(other)), student, teacher)


@pytest.mark.parametrize("student_name,teacher_name", PAIRS[:2])
def test_batch_equals_rows(student_name, teacher_name):
    """aligned_chunks_flat over a batch (one sort for all rows) equals the reference row by row."""
    from fusekernels.tokenization.chunks import aligned_chunks_flat

    student_tok, teacher_tok = load_or_skip(student_name), load_or_skip(teacher_name)
    student, teacher = TokenizerProfile.from_tokenizer(student_tok), TokenizerProfile.from_tokenizer(teacher_tok)
    texts = MIXED_SAMPLES + [CODE_SAMPLE, "x", "In the beginning God created the heaven."]
    rows, s_flat, t_flat, ce_flat = [], [], [], []
    for n, text in enumerate(texts):
        t_ids = teacher_tok(text, add_special_tokens=False)["input_ids"] + [teacher_tok.eos_token_id]
        ce = np.random.default_rng(n).exponential(2.0, len(t_ids))
        rows.append(_reference(student_tok, teacher_tok, text, ce, student, teacher))
        s_flat += rows[-1][0]
        t_flat += rows[-1][1]
        ce_flat += list(ce)
    s_off = np.cumsum([0] + [len(r[0]) for r in rows])
    t_off = np.cumsum([0] + [len(r[1]) for r in rows])
    got = aligned_chunks_flat(s_flat, s_off, t_flat, t_off, ce_flat, student, teacher, texts=texts)
    for n, (s_ids, _, span, logprob, rate) in enumerate(rows):
        lo = s_off[n]
        assert {r: int(got.span[lo + r]) for r in range(len(s_ids)) if got.span[lo + r]} == span
        for r, lp in logprob.items():
            assert got.logprob[lo + r] == pytest.approx(lp, rel=1e-5, abs=1e-5)
        for r in range(len(s_ids)):
            if r in rate:
                assert got.nats_per_byte[lo + r] == pytest.approx(rate[r], rel=1e-5)
            else:
                assert math.isnan(got.nats_per_byte[lo + r])
