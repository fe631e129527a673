"""byte_span_align_flat (one native call per batch) equals byte_span_align row by row."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from fusekernels.tokenization.batch import arrow_lists, arrow_matrix, byte_span_align_flat, nested_array
from fusekernels.tokenization.byte_span import build_byte_span_map, byte_span_align
from fusekernels.tokenization.profile import TokenizerProfile
from tests.tokenization.helpers import teacher_topk


def _offsets(rows) -> np.ndarray:
    return np.r_[0, np.cumsum([len(r) for r in rows])].astype(np.int64)


def _per_row(rows, base, blend, table, k, **kwargs):
    """Reference: byte_span_align per row, cut / padded to width k, concatenated."""
    ids, logits, masks = [], [], []
    for b, a, tid, tlg, text in rows:
        res, mask = byte_span_align(b, a, tid, tlg, base, blend, id_map=table, text=text, return_mask=True, **kwargs)
        pad = max(k - res.ids.shape[1], 0)
        ids.append(np.pad(res.ids, ((0, 0), (0, pad)), constant_values=-1)[:, :k])
        logits.append(np.pad(res.logits, ((0, 0), (0, pad)), constant_values=-np.inf)[:, :k])
        masks.append(mask)
    return np.concatenate(ids), np.concatenate(logits), np.concatenate(masks)


def _flat(rows, base, blend, table, k, **kwargs):
    return byte_span_align_flat(np.concatenate([r[0] for r in rows]), _offsets([r[0] for r in rows]),
                                np.concatenate([r[1] for r in rows]), _offsets([r[1] for r in rows]),
                                np.concatenate([r[2] for r in rows]), np.concatenate([r[3] for r in rows]),
                                base, blend, id_map=table, texts=[r[4] for r in rows], k=k, **kwargs)


def _assert_same(got, want):
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        assert np.array_equal(g, w)


PAIRS = [("mistral-v1", "gpt2"), ("gpt2", "mistral-v1"), ("qwen", "mistral-v3")]


@pytest.mark.parametrize("base_name,blend_name", PAIRS)
@pytest.mark.parametrize("match,check", [("span", "length"), ("end", "bytes"), ("span", "prefix")])
def test_real_tokenizers_equal_per_row(tokenizer, texts, base_name, blend_name, match, check):
    base_tok, blend_tok = tokenizer(base_name), tokenizer(blend_name)
    base, blend = TokenizerProfile.from_tokenizer(base_tok), TokenizerProfile.from_tokenizer(blend_tok)
    table = build_byte_span_map(base, blend)
    rows = []
    for s, text in enumerate(texts + [" leading space", "x"]):
        b = np.array(base_tok(text, add_special_tokens=s % 2 == 0)["input_ids"])
        a = blend_tok(text, add_special_tokens=False)["input_ids"]
        if s % 3 == 1 and blend_tok.eos_token_id is not None:
            a = a + [blend_tok.eos_token_id]
        if check == "prefix" and s % 3 == 0:
            b = b[:max(1, len(b) // 2)]
        tid, tlg = teacher_topk(a, blend.vocab_size, k=5, seed=s)
        rows.append((b, np.array(a), tid, tlg.astype(np.float16), text))
    for k in (5, 3, 8):
        _assert_same(_flat(rows, base, blend, table, k, match=match, check=check),
                     _per_row(rows, base, blend, table, k, match=match, check=check))


# ---------------------------------------------------------------------- property tests
ALPHABET = b"ab \xc3\xa9"  # 'é' is two bytes: tokens may split a character


def _toy_profile(kind: str, dummy_prefix: str, extra: list[bytes]) -> TokenizerProfile:
    """Every 1- and 2-byte string over ALPHABET, some longer tokens, then eos and unk."""
    singles = [bytes([c]) for c in ALPHABET]
    pieces = singles + [x + y for x in singles for y in singles] + extra
    tokens = [p.decode("latin-1") for p in pieces] + ["</s>", "<unk>"]
    token_bytes = pieces + [b"", b""]
    n = len(tokens)
    special = np.zeros(n, bool)
    special[-2:] = True
    return TokenizerProfile(name=f"toy-{kind}-{dummy_prefix}", kind=kind, marker="", tokens=tokens,
                            token_bytes=token_bytes, byte_lengths=np.array([len(t) for t in token_bytes], np.int32),
                            is_special=special, is_byte_fallback=np.zeros(n, bool), dummy_prefix=dummy_prefix,
                            special_ids={"eos": n - 2, "unk": n - 1})


def _tokenize(profile: TokenizerProfile, text: bytes, cuts: list[int]) -> list[int]:
    """Ids of ``text`` split into pieces of the given lengths (1..3, clipped to known tokens)."""
    index = {b: i for i, b in enumerate(profile.token_bytes) if b}
    ids, pos, c = [], 0, 0
    while pos < len(text):
        size = cuts[c % len(cuts)]
        c += 1
        while size > 1 and text[pos:pos + size] not in index:
            size -= 1
        ids.append(index[text[pos:pos + size]])
        pos += size
    return ids


row_strategy = st.tuples(
    st.lists(st.sampled_from(list(ALPHABET)), min_size=1, max_size=40).map(bytes),  # text bytes
    st.lists(st.integers(1, 3), min_size=1, max_size=6),  # base piece lengths
    st.lists(st.integers(1, 3), min_size=1, max_size=6),  # blend piece lengths
    st.sampled_from(["plain", "eos_base", "eos_blend", "unk_base", "truncate", "other_text", "space_text"]),
    st.integers(0, 2**16),
)


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(row_strategy, min_size=1, max_size=6), k_in=st.integers(0, 5), k_out=st.integers(0, 6),
       match=st.sampled_from(["span", "end"]), check=st.sampled_from(["length", "bytes", "prefix", "none"]),
       base_prefix=st.sampled_from(["none", "always", "unless_space"]),
       blend_prefix=st.sampled_from(["none", "unless_space"]), with_texts=st.booleans())
def test_property_equal_per_row(rows, k_in, k_out, match, check, base_prefix, blend_prefix, with_texts):
    base = _toy_profile("other", base_prefix, [b"ab ", b" ab"])
    blend = _toy_profile("other", blend_prefix, [b"\xc3\xa9a", b"bb "])
    # a sparse id map with unmapped (-1) and colliding entries exercises dropping and de-duplication
    table = build_byte_span_map(base, blend, fallback="prefix", cache=False)
    table.ids[::5] = -1
    table.ids[1::7] = table.ids[2]
    prepared = []
    for text, b_cuts, a_cuts, variant, seed in rows:
        base_text = b" " + text if base_prefix != "none" and not text.startswith(b" ") or base_prefix == "always" \
            else text
        blend_text = b" " + text if blend_prefix == "unless_space" and not text.startswith(b" ") else text
        b = _tokenize(base, base_text, b_cuts)
        a = _tokenize(blend, blend_text, a_cuts)
        if variant == "eos_base":
            b.append(base.special_ids["eos"])
        elif variant == "eos_blend":
            a.insert(len(a) // 2, blend.special_ids["eos"])
        elif variant == "unk_base":
            b[len(b) // 2] = base.special_ids["unk"]
        elif variant == "truncate":
            b = b[:max(1, len(b) // 2)]
        elif variant == "other_text":
            a = _tokenize(blend, blend_text + b"a", a_cuts)
        rng = np.random.default_rng(seed)
        tid = rng.integers(0, blend.vocab_size, size=(len(a), k_in))
        tlg = rng.normal(size=(len(a), k_in)).astype(np.float32)
        text_arg = (" " + text.decode("latin-1") if variant == "space_text" else text.decode("latin-1")) \
            if with_texts else None
        prepared.append((np.array(b), np.array(a), tid, tlg, text_arg))
    try:
        want = _per_row(prepared, base, blend, table, k_out, match=match, check=check)
    except ValueError as exc:
        with pytest.raises(ValueError) as caught:
            _flat(prepared, base, blend, table, k_out, match=match, check=check)
        assert str(exc) in str(caught.value)
        event("rejected")
        return
    event("aligned")
    _assert_same(_flat(prepared, base, blend, table, k_out, match=match, check=check, threads=2), want)


def test_bad_rows_raise_per_row_messages(profile):
    base, blend = profile("mistral-v1"), profile("gpt2")
    ids = np.array([1, 2, 3])
    tid = np.zeros((3, 2), np.int64)
    tlg = np.zeros((3, 2), np.float32)
    nan = tlg.copy()
    nan[1, 0] = np.nan
    cases = [(nan, "rows\\[1\\]: topk_logits contains NaN"),
             (tlg.astype(np.int32), "rows\\[0\\]: topk_logits must be floating point")]
    for logits, message in cases:
        with pytest.raises(ValueError, match=message):
            byte_span_align_flat(np.r_[ids, ids], [0, 3, 6], np.r_[ids, ids], [0, 3, 6], np.r_[tid, tid],
                                 np.r_[tlg, logits] if logits.dtype == tlg.dtype else np.r_[logits, logits],
                                 base, blend, check="none")
    with pytest.raises(ValueError, match="rows\\[1\\]: base_ids must not be empty"):
        byte_span_align_flat(ids, [0, 3, 3], np.r_[ids, ids], [0, 3, 6], np.r_[tid, tid], np.r_[tlg, tlg], base, blend,
                             check="none")
    with pytest.raises(ValueError, match="rows\\[0\\]: blend_ids holds id"):
        byte_span_align_flat(ids, [0, 3], ids + 10**6, [0, 3], tid, tlg, base, blend, check="none")
    with pytest.raises(ValueError, match="rows\\[0\\]: base_ids and blend_ids must tokenize the same text"):
        byte_span_align_flat(ids, [0, 3], np.array([300, 301, 302]), [0, 3], tid, tlg, base, blend, check="bytes")
    with pytest.raises(ValueError, match="base_offsets and blend_offsets"):
        byte_span_align_flat(ids, [0, 3], ids, [0, 1, 3], tid, tlg, base, blend)
    with pytest.raises(ValueError, match="check must be"):
        byte_span_align_flat(ids, [0, 3], ids, [0, 3], tid, tlg, base, blend, check="strict")


def test_arrow_round_trip():
    pa = pytest.importorskip("pyarrow")
    values = np.arange(24, dtype=np.int32).reshape(6, 2, 2)
    offsets = np.array([0, 1, 1, 6])
    col = nested_array(values, offsets)
    assert col.to_pylist()[0] == [[[0, 1], [2, 3]]] and col.to_pylist()[1] == []
    mat = arrow_matrix(nested_array(values.reshape(6, 4), offsets).slice(1))
    assert np.array_equal(mat[0], values.reshape(6, 4)[1:]) and mat[1].tolist() == [0, 0, 5]
    flat, off = arrow_lists(pa.array([[1, 2], [3], [4, 5, 6]]).slice(1))
    assert flat.tolist() == [3, 4, 5, 6] and off.tolist() == [0, 1, 4]
    assert arrow_matrix(pa.array([[[1, 2], [3]]])) is None  # ragged inner lists
