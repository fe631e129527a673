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
    out = align_teachers(base, [teacher], base_tokenizer=base_tok, teacher_tokenizers=[blend_tok], fallback=fallback,
                         include_base_teacher=True)
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
        align_teachers(base, [teacher.select([0, 1])], base_tokenizer=base_tok, teacher_tokenizers=[blend_tok],
                       include_base_teacher=True, fallback="published")
    with pytest.raises(ValueError, match="column 'text' differs"):
        shuffled = teacher.select([1, 0, 2])
        align_teachers(base, [shuffled], base_tokenizer=base_tok, teacher_tokenizers=[blend_tok],
                       include_base_teacher=True, fallback="published")
    with pytest.raises(ValueError, match=r"base lacks column\(s\) \['topk_ids'"):
        align_teachers(base.select_columns(["text", "input_ids"]), [teacher], base_tokenizer=base_tok,
                       teacher_tokenizers=[blend_tok], include_base_teacher=True, fallback="published")
    with pytest.raises(ValueError, match="1 teacher datasets but 0"):
        align_teachers(base, [teacher], base_tokenizer=base_tok, teacher_tokenizers=[], include_base_teacher=True,
                       fallback="published")
    with pytest.raises(ValueError, match="fallback"):
        align_teachers(base, [teacher], base_tokenizer=base_tok, teacher_tokenizers=[blend_tok], fallback="drop",
                       include_base_teacher=True)


def test_truncated_teacher_rows_align_as_prefixes(tokenizers):
    """Extraction truncates each tokenization at its model's maximum length, so a teacher row may
    cover only a prefix of the base row's text: accepted (check="prefix"), unlike different texts."""
    base_tok, blend_tok = tokenizers
    base, teacher = _fake_extraction(base_tok, 0), _fake_extraction(blend_tok, 1)
    cut = {name: [row[:6] for row in teacher.with_format("numpy")[name]] for name in ("input_ids", "topk_ids",
                                                                                       "topk_logits")}
    truncated = datasets.Dataset.from_dict({**teacher.to_dict(), **cut}, features=teacher.features)
    out = align_teachers(base, [truncated], base_tokenizer=base_tok, teacher_tokenizers=[blend_tok],
                         include_base_teacher=True, fallback="published")
    stats = alignment_stats(out)
    assert 0 < stats.aligned[1] <= 6 * len(TEXTS) and stats.positions == sum(len(x) for x in base["input_ids"])
    with pytest.raises(ValueError, match="base_ids and blend_ids must tokenize the same text"):
        align_teachers(base, [truncated], base_tokenizer=base_tok, teacher_tokenizers=[blend_tok], check="length",
                       include_base_teacher=True, fallback="published")


def _reference(base, teachers, base_tok, teacher_toks, *, method, fallback, include_base, k, check="prefix"):
    """The per-row pipeline: one aligner call per row and teacher, stacked row by row."""
    from fusekernels.tokenization.byte_span import byte_span_align
    from fusekernels.tokenization.compat import compat_align
    from fusekernels.tokenization.profile import TokenizerProfile

    bp = TokenizerProfile.from_tokenizer(base_tok)
    profiles = [TokenizerProfile.from_tokenizer(t) for t in teacher_toks]
    out = []
    for r in range(len(base)):
        b = base.with_format("numpy")[r]
        ids = b["input_ids"].astype(np.int64)
        sources = []
        if include_base:
            tid = np.pad(b["topk_ids"], ((0, 0), (0, k - b["topk_ids"].shape[1])), constant_values=-1)
            tlg = np.pad(b["topk_logits"].astype(np.float32), ((0, 0), (0, k - b["topk_ids"].shape[1])),
                         constant_values=-np.inf)
            sources.append((tid, tlg, np.ones(len(ids), bool), b["metric_ce"]))
        for teacher, ap in zip(teachers, profiles):
            t = teacher.with_format("numpy")[r]
            args = (ids, t["input_ids"], t["topk_ids"], t["topk_logits"], bp, ap)
            res, mask = (byte_span_align(*args, text=b.get("text"), check=check, return_mask=True)
                         if method == "byte_span" else
                         compat_align(*args, mode=method.split("_")[1], check=check, return_mask=True))
            pad = k - res.ids.shape[1]
            sources.append((np.pad(res.ids, ((0, 0), (0, pad)), constant_values=-1),
                            np.pad(res.logits, ((0, 0), (0, pad)), constant_values=-np.inf), mask, t["metric_ce"]))
        t_ids = np.zeros((len(ids), len(sources), k), np.int32)
        t_logits = np.full((len(ids), len(sources), k), -np.inf, np.float32)
        for s, (tid, tlg, mask, _) in enumerate(sources):
            valid = np.isfinite(tlg) & (tid >= 0)
            if fallback == "absent":
                valid &= mask[:, None]
            t_ids[:, s], t_logits[:, s] = np.where(valid, tid, 0), np.where(valid, tlg, -np.inf)
            empty = ~valid.any(1)
            if fallback == "published":
                t_ids[empty, s], t_logits[empty, s] = t_ids[empty, 0], t_logits[empty, 0]
        out.append({"input_ids": ids, "teacher_ids": t_ids, "teacher_logits": t_logits.astype(np.float16),
                    "teacher_ce": np.array([x[3] for x in sources], np.float32),
                    "teacher_aligned": np.array([x[2].sum() for x in sources], np.int32)})
    return out


@pytest.mark.parametrize("method,fallback,include_base", [("byte_span", "published", True),
                                                          ("byte_span", "absent", False),
                                                          ("compat_hard", "published", True),
                                                          ("compat_soft", "absent", True)])
def test_two_teachers_equal_per_row_pipeline(tokenizers, method, fallback, include_base):
    base_tok, llama = tokenizers
    gpt2 = _tokenizer("gpt2")
    base = _fake_extraction(base_tok, 0, k=3)  # narrower than the teachers: padded to k
    teachers = [_fake_extraction(llama, 1), _fake_extraction(gpt2, 2)]
    # truncated teacher rows (check="prefix", the default) and a ragged batch split
    teachers[0] = teachers[0].map(lambda row: {"input_ids": row["input_ids"][:-3], "topk_ids": row["topk_ids"][:-3],
                                               "topk_logits": row["topk_logits"][:-3]}, features=teachers[0].features)
    out = align_teachers(base, teachers, base_tokenizer=base_tok, teacher_tokenizers=[llama, gpt2], method=method,
                         fallback=fallback, include_base_teacher=include_base, batch_size=2)
    want = _reference(base, teachers, base_tok, [llama, gpt2], method=method, fallback=fallback,
                      include_base=include_base, k=K)
    rows = out.with_format("numpy")
    for r, expected in enumerate(want):
        for name, value in expected.items():
            got = rows[r][name]
            assert got.shape == value.shape and np.array_equal(got, value.astype(got.dtype)), (r, name)


def test_nothing_written_into_inputs_and_cache_reused(tokenizers, tmp_path, monkeypatch):
    base_tok, blend_tok = tokenizers
    monkeypatch.setenv("FUSEKERNELS_CACHE", str(tmp_path / "cache"))
    for name, seed, tok in (("base", 0, base_tok), ("teacher", 1, blend_tok)):
        _fake_extraction(tok, seed).save_to_disk(str(tmp_path / name))
    before = [sorted(p.name for p in (tmp_path / d).iterdir()) for d in ("base", "teacher")]

    def run():
        return align_teachers(datasets.load_from_disk(str(tmp_path / "base")),
                              [datasets.load_from_disk(str(tmp_path / "teacher"))],
                              base_tokenizer=base_tok, teacher_tokenizers=[blend_tok], include_base_teacher=True,
                              fallback="published")

    first = run()
    cached = sorted((tmp_path / "cache").rglob("*.arrow"))
    assert len(cached) == 1  # the result went to the user cache, under a deterministic name
    stamp = cached[0].stat().st_mtime_ns
    second = run()
    assert sorted((tmp_path / "cache").rglob("*.arrow")) == cached and cached[0].stat().st_mtime_ns == stamp
    after = [sorted(p.name for p in (tmp_path / d).iterdir()) for d in ("base", "teacher")]
    assert after == before
    assert first[:] == second[:]
