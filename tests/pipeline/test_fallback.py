"""Fallback semantics of align_teachers, end to end.

published: align_teachers -> FusionDataCollator -> fusekernels.loss.fusion_loss equals the float64
re-implementation of the published collator + loss (tests/reference/published_loss.py) with three
teachers, one of which has positions whose aligned list is empty (those take the base model's own
distribution; no teacher is dropped from MinCE / AvgCE there).
absent: positions are dropped exactly where the aligner says the teacher has no distribution, and a
real one-entry distribution on the current token is kept.
"""
import datasets
import numpy as np
import pytest
import torch

from fusekernels.integration import FusionDataCollator
from fusekernels.integration.trainer import shift_labels
from fusekernels.loss import fusion_loss
from fusekernels.pipeline.align_step import align_teachers, alignment_stats
from fusekernels.pipeline.extract import tokenize_for_teacher
from tests.pipeline.test_align_step import TEXTS, _tokenizer
from tests.reference.published_loss import published_fusion_loss

K = 4


@pytest.fixture(scope="module")
def profiles():
    from fusekernels.tokenization.profile import TokenizerProfile

    base_tok, blend_tok = _tokenizer("mistral-v1"), _tokenizer("llama3")
    return base_tok, blend_tok, TokenizerProfile.from_tokenizer(base_tok), TokenizerProfile.from_tokenizer(blend_tok)


def _extraction(tokenizer, topk_ids, seed, metric):
    """extract_teacher_topk's columns with the given top-k ids [n, k] per text and random logits."""
    rng = np.random.default_rng(seed)
    ids = tokenize_for_teacher(tokenizer, TEXTS, 512)
    rows = {"text": TEXTS, "input_ids": [np.asarray(x, np.int32) for x in ids],
            "topk_ids": [np.asarray(t, np.int32) for t in topk_ids],
            "topk_logits": [-np.sort(-rng.normal(size=(len(x), np.shape(t)[1])), axis=1).astype(np.float16)
                            for x, t in zip(ids, topk_ids)],
            "metric_ce": [np.float32(metric + 0.01 * r) for r in range(len(TEXTS))]}
    k = np.shape(topk_ids[0])[1]
    features = datasets.Features({"text": datasets.Value("string"), "input_ids": datasets.List(datasets.Value("int32")),
                                  "topk_ids": datasets.Array2D((None, k), "int32"),
                                  "topk_logits": datasets.Array2D((None, k), "float16"),
                                  "metric_ce": datasets.Value("float32")})
    return datasets.Dataset.from_dict(rows, features=features)


@pytest.fixture(scope="module")
def three_teachers(profiles):
    """Base (teacher 0, worst CE) + two Llama-3 teachers aligned with compat_hard. Teacher 2 (best CE)
    has, at every other position, a top-k with no token in the base vocabulary: those matched
    positions get an empty aligned list."""
    from fusekernels.tokenization.compat import compat_tables

    base_tok, blend_tok, bp, ap = profiles
    exact = np.asarray(compat_tables(bp, ap, mode="hard").exact)
    in_base, not_in_base = np.flatnonzero(exact >= 0), np.flatnonzero(exact < 0)
    rng = np.random.default_rng(0)
    blend_ids = tokenize_for_teacher(blend_tok, TEXTS, 512)
    base_ids = tokenize_for_teacher(base_tok, TEXTS, 512)

    def topk(pool_for_position):
        return [np.stack([rng.choice(pool_for_position(i), K, replace=False) for i in range(len(x))])
                for x in blend_ids]

    base = _extraction(base_tok, [rng.choice(len(base_tok), (len(x), K)) for x in base_ids], 1, metric=2.5)
    teacher1 = _extraction(blend_tok, topk(lambda i: in_base), 2, metric=1.5)
    teacher2 = _extraction(blend_tok, topk(lambda i: not_in_base if i % 2 else in_base), 3, metric=1.0)
    return base, [teacher1, teacher2]


def _published_teachers(base, teachers, bp, ap):
    """Per-teacher lists in the published format; blending teachers through the compat aligner."""
    from fusekernels.tokenization.compat import compat_align

    rows = base.with_format("numpy")
    out = [{"indices": [r["topk_ids"].tolist() for r in rows], "logits": [r["topk_logits"].tolist() for r in rows],
            "metric_ce": [float(r["metric_ce"]) for r in rows]}]
    for teacher in teachers:
        ids, logits = [], []
        for b, t in zip(rows, teacher.with_format("numpy")):
            i, lg = compat_align(b["input_ids"], t["input_ids"], t["topk_ids"], t["topk_logits"], bp, ap,
                                 mode="hard").to_lists()
            ids.append(i)
            logits.append(lg)
        out.append({"indices": ids, "logits": logits, "metric_ce": list(teacher["metric_ce"])})
    empty = sum(len(x) == 0 for seq in out[2]["logits"] for x in seq)
    assert empty > 3 and not any(len(x) == 0 for seq in out[1]["logits"] for x in seq)
    return out


@pytest.mark.parametrize("fusion, loss_type", [("mince", "kl"), ("avgce", "kl"), ("avgce", "ce")])
def test_published_fallback_matches_the_published_loss(profiles, three_teachers, fusion, loss_type):
    base_tok, blend_tok, bp, ap = profiles
    base, teachers = three_teachers
    aligned = align_teachers(base, teachers, base_tokenizer=base_tok, teacher_tokenizers=[blend_tok] * 2,
                             method="compat_hard", fallback="published", include_base_teacher=True)
    batch = FusionDataCollator(pad_token_id=0, vocab_size=len(base_tok))(list(aligned.with_format("numpy")))
    assert batch["teacher_ids"].shape[2:] == (3, K)
    # no teacher is ever absent at an attended position
    attended = batch["attention_mask"].bool()
    assert torch.isfinite(batch["teacher_logits"]).any(-1)[attended].all()

    torch.manual_seed(0)
    logits = torch.randn(*batch["input_ids"].shape, len(base_tok), dtype=torch.float64) * 2
    got = fusion_loss(logits.float(), shift_labels(batch["labels"]), batch["teacher_ids"], batch["teacher_logits"],
                      teacher_ce=batch["teacher_ce"], fusion=fusion, loss_type=loss_type, lam=0.9,
                      fusion_mask=attended, backend="torch", return_components=True)
    expected, clm, fused = published_fusion_loss(
        logits, batch["labels"], batch["attention_mask"], _published_teachers(base, teachers, bp, ap), mode=fusion,
        loss_type=loss_type, lam=0.9, pad_token_id=0)
    assert float(got.clm_loss) == pytest.approx(float(clm), rel=1e-5)
    assert float(got.fusion_loss) == pytest.approx(float(fused), rel=1e-4, abs=1e-6)
    assert float(got.loss) == pytest.approx(float(expected), rel=1e-5)


def test_absent_fallback_follows_the_aligner_mask(profiles, three_teachers):
    from fusekernels.tokenization.compat import compat_align

    base_tok, blend_tok, bp, ap = profiles
    base, teachers = three_teachers
    aligned = align_teachers(base, teachers, base_tokenizer=base_tok, teacher_tokenizers=[blend_tok] * 2,
                             method="compat_hard", fallback="absent", include_base_teacher=True).with_format("numpy")
    for row, b in zip(aligned, base.with_format("numpy")):
        for t, teacher in enumerate(teachers, start=1):
            src = teacher.with_format("numpy")[int(np.flatnonzero(np.array(TEXTS) == b["text"])[0])]
            result, mask = compat_align(b["input_ids"], src["input_ids"], src["topk_ids"], src["topk_logits"], bp, ap,
                                        mode="hard", return_mask=True)
            present = np.isfinite(row["teacher_logits"][:, t])
            assert np.array_equal(present, np.isfinite(result.logits) & mask[:, None])
            assert row["teacher_aligned"][t] == mask.sum()


def test_published_fallback_needs_the_base_teacher_with_compat(profiles, three_teachers):
    base_tok, blend_tok, _, _ = profiles
    base, teachers = three_teachers
    with pytest.raises(ValueError, match="include_base_teacher=True"):
        align_teachers(base.select_columns(["text", "input_ids"]), teachers[:1], base_tokenizer=base_tok,
                       teacher_tokenizers=[blend_tok], method="compat_hard", include_base_teacher=False,
                       fallback="published")


def test_one_entry_teacher_distribution_on_the_current_token_is_kept(profiles):
    """k = 1 and the teacher's top-1 at every position is its own current token: at byte-span matched
    positions the aligned distribution is the single pair (current base token, logit). That is the
    teacher's real distribution, not the one-hot fallback, so fallback="absent" keeps it."""
    from fusekernels.tokenization.byte_span import byte_span_align

    base_tok, blend_tok, bp, ap = profiles
    blend_ids = tokenize_for_teacher(blend_tok, TEXTS, 512)
    teacher = _extraction(blend_tok, [np.asarray(x)[:, None] for x in blend_ids], 4, metric=1.0)
    base = _extraction(base_tok, [np.asarray(x)[:, None] for x in tokenize_for_teacher(base_tok, TEXTS, 512)], 5,
                       metric=2.0)
    out = align_teachers(base, [teacher], base_tokenizer=base_tok, teacher_tokenizers=[blend_tok], fallback="absent",
                         include_base_teacher=True)
    total = on_current_token = 0
    for row, b, t in zip(out.with_format("numpy"), base.with_format("numpy"), teacher.with_format("numpy")):
        result, mask = byte_span_align(b["input_ids"], t["input_ids"], t["topk_ids"], t["topk_logits"], bp, ap,
                                       text=b["text"], return_mask=True)
        present = np.isfinite(row["teacher_logits"][:, 1, 0])
        assert np.array_equal(present, mask)
        assert np.array_equal(row["teacher_ids"][mask, 1, 0], result.ids[mask, 0])
        np.testing.assert_array_equal(row["teacher_logits"][mask, 1, 0], result.logits[mask, 0].astype(np.float16))
        total += int(mask.sum())
        on_current_token += int((result.ids[mask, 0] == b["input_ids"][mask]).sum())
    assert on_current_token > total // 2  # the case a guess from the values would take for the fallback
    assert alignment_stats(out).aligned[1] == total
