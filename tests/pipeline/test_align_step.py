"""align_teachers on real tokenizers (Mistral SentencePiece base, Llama-3 byte-level BPE teacher)
with synthetic teacher top-k: the stacked columns must equal what the tokenization API returns."""
import datasets
import numpy as np
import pytest

from fusekernels.pipeline.align_step import align_teachers, alignment_stats
from fusekernels.pipeline.extract import tokenize_for_teacher, tokenize_texts

TEXTS = ["In the beginning God created the heaven and the earth.",
         "And the Spirit of God moved upon the face of the waters.\n  def f(x): return x**2  # 你好",
         "  Leading spaces, émojis 🙂 and numbers 12345."]
K = 4


def _tokenizer(name):
    assets = pytest.importorskip("fusekernels.tokenization.assets")
    try:
        return assets.load_tokenizer(name)
    except assets.AssetUnavailable as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def tokenizers():
    return _tokenizer("mistral-v1"), _tokenizer("llama3")


def _fake_extraction(tokenizer, seed, k=K):
    """What extract_teacher_topk stores, with random top-k (distinct ids per position)."""
    rng = np.random.default_rng(seed)
    ids = tokenize_for_teacher(tokenizer, TEXTS, 512)
    vocab = len(tokenizer)
    rows = {"text": TEXTS, "input_ids": [np.asarray(x, np.int32) for x in ids], "topk_ids": [], "topk_logits": [],
            "metric_ce": rng.uniform(1, 3, len(TEXTS)).astype(np.float32).tolist()}
    for x in ids:
        rows["topk_ids"].append(np.stack([rng.choice(vocab, k, replace=False) for _ in x]).astype(np.int32))
        rows["topk_logits"].append(-np.sort(-rng.normal(size=(len(x), k)), axis=1).astype(np.float16))
    features = datasets.Features({"text": datasets.Value("string"), "input_ids": datasets.List(datasets.Value("int32")),
                                  "topk_ids": datasets.Array2D((None, k), "int32"),
                                  "topk_logits": datasets.Array2D((None, k), "float16"),
                                  "metric_ce": datasets.Value("float32")})
    return datasets.Dataset.from_dict(rows, features=features)


@pytest.mark.parametrize("fallback", ["published", "absent"])
def test_stacks_base_and_byte_span_teacher(tokenizers, fallback):
    from fusekernels.tokenization.byte_span import byte_span_align
    from fusekernels.tokenization.profile import TokenizerProfile

    base_tok, blend_tok = tokenizers
    base, teacher = _fake_extraction(base_tok, 0), _fake_extraction(blend_tok, 1)
    out = align_teachers(base, [teacher], base_tokenizer=base_tok, teacher_tokenizers=[blend_tok], fallback=fallback)
    assert out.features["teacher_ids"].shape == (None, 2, K)
    rows = out.with_format("numpy")
    bp, ap = TokenizerProfile.from_tokenizer(base_tok), TokenizerProfile.from_tokenizer(blend_tok)
    total_aligned = 0
    for r in range(len(TEXTS)):
        row, b, t = rows[r], base.with_format("numpy")[r], teacher.with_format("numpy")[r]
        assert np.array_equal(row["input_ids"], b["input_ids"])
        assert np.array_equal(row["teacher_ids"][:, 0], b["topk_ids"])  # the base model is teacher 0
        assert np.array_equal(row["teacher_logits"][:, 0], b["topk_logits"])
        np.testing.assert_allclose(row["teacher_ce"], [b["metric_ce"], t["metric_ce"]])
        expected, mask = byte_span_align(b["input_ids"], t["input_ids"], t["topk_ids"], t["topk_logits"], bp, ap,
                                         text=TEXTS[r], return_mask=True)
        keep = np.isfinite(expected.logits)
        if fallback == "absent":
            keep &= mask[:, None]
        got_ids, got_logits = row["teacher_ids"][:, 1], row["teacher_logits"][:, 1]
        assert np.array_equal(np.isfinite(got_logits), keep)
        assert np.array_equal(got_ids[keep], expected.ids[keep]) and (got_ids[~keep] == 0).all()
        np.testing.assert_allclose(got_logits[keep], expected.logits[keep].astype(np.float16))
        assert row["teacher_aligned"].tolist() == [len(mask), int(mask.sum())]
        total_aligned += int(mask.sum())
    stats = alignment_stats(out)
    assert stats.positions == sum(len(x) for x in base["input_ids"])
    assert stats.aligned == [stats.positions, total_aligned]
    assert 0 < total_aligned < stats.positions  # both aligned and fallback positions were exercised


def test_blending_teacher_only_with_compat_mode(tokenizers):
    base_tok, blend_tok = tokenizers
    teacher = _fake_extraction(blend_tok, 2)
    base = tokenize_texts(base_tok, datasets.Dataset.from_dict({"text": TEXTS}), max_length=512)
    out = align_teachers(base, [teacher], base_tokenizer=base_tok, teacher_tokenizers=[blend_tok],
                         method="compat_hard", include_base_teacher=False, fallback="absent")
    assert out.features["teacher_ids"].shape == (None, 1, K)
    assert out[0]["teacher_ce"] == pytest.approx([teacher[0]["metric_ce"]])
    stats = alignment_stats(out)
    assert 0 < stats.aligned[0] < stats.positions


def test_bad_inputs(tokenizers):
    base_tok, blend_tok = tokenizers
    base, teacher = _fake_extraction(base_tok, 0), _fake_extraction(blend_tok, 1)
    with pytest.raises(ValueError, match="2 rows but base has 3"):
        align_teachers(base, [teacher.select([0, 1])], base_tokenizer=base_tok, teacher_tokenizers=[blend_tok])
    with pytest.raises(ValueError, match="column 'text' differs"):
        shuffled = teacher.select([1, 0, 2])
        align_teachers(base, [shuffled], base_tokenizer=base_tok, teacher_tokenizers=[blend_tok])
    with pytest.raises(ValueError, match=r"base lacks column\(s\) \['topk_ids'"):
        align_teachers(base.select_columns(["text", "input_ids"]), [teacher], base_tokenizer=base_tok,
                       teacher_tokenizers=[blend_tok])
    with pytest.raises(ValueError, match="1 teacher datasets but 0"):
        align_teachers(base, [teacher], base_tokenizer=base_tok, teacher_tokenizers=[])
    with pytest.raises(ValueError, match="fallback"):
        align_teachers(base, [teacher], base_tokenizer=base_tok, teacher_tokenizers=[blend_tok], fallback="drop")


def test_truncated_teacher_rows_align_as_prefixes(tokenizers):
    """Extraction truncates each tokenization at its model's maximum length, so a teacher row may
    cover only a prefix of the base row's text: accepted (check="prefix"), unlike different texts."""
    base_tok, blend_tok = tokenizers
    base, teacher = _fake_extraction(base_tok, 0), _fake_extraction(blend_tok, 1)
    cut = {name: [row[:6] for row in teacher.with_format("numpy")[name]] for name in ("input_ids", "topk_ids",
                                                                                       "topk_logits")}
    truncated = datasets.Dataset.from_dict({**teacher.to_dict(), **cut}, features=teacher.features)
    out = align_teachers(base, [truncated], base_tokenizer=base_tok, teacher_tokenizers=[blend_tok])
    stats = alignment_stats(out)
    assert 0 < stats.aligned[1] <= 6 * len(TEXTS) and stats.positions == sum(len(x) for x in base["input_ids"])
    with pytest.raises(ValueError, match="base_ids and blend_ids must tokenize the same text"):
        align_teachers(base, [truncated], base_tokenizer=base_tok, teacher_tokenizers=[blend_tok], check="length")
