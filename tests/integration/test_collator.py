"""FusionDataCollator: shapes, padding values, packing, metric levels and input validation."""
import numpy as np
import pytest
import torch

from fusekernels.integration.collator import FusionDataCollator

VOCAB = 512


def make_examples(lengths=(5, 9, 3), n_teachers=2, k=4, seed=0, per_token_ce=False):
    rng = np.random.default_rng(seed)
    out = []
    for length in lengths:
        logits = rng.normal(size=(length, n_teachers, k)).astype(np.float32)
        logits[0, 0, 2:] = -np.inf
        out.append({
            "input_ids": rng.integers(1, VOCAB, size=length).tolist(),
            "teacher_ids": rng.integers(0, VOCAB, size=(length, n_teachers, k)).astype(np.int32),
            "teacher_logits": logits,
            "teacher_ce": rng.uniform(0.5, 3, size=(length, n_teachers) if per_token_ce else (n_teachers,))
            .astype(np.float32),
        })
    return out


def test_padded_batch_shapes_dtypes_and_padding_values():
    examples = make_examples()
    batch = FusionDataCollator(pad_token_id=7)(examples)
    B, T = 3, 9
    expected = {"input_ids": ((B, T), torch.int64), "attention_mask": ((B, T), torch.int64),
                "labels": ((B, T), torch.int64), "teacher_ids": ((B, T, 2, 4), torch.int32),
                "teacher_logits": ((B, T, 2, 4), torch.float32), "teacher_ce": ((B, T, 2), torch.float32)}
    assert set(batch) == set(expected)
    for name, (shape, dtype) in expected.items():
        assert tuple(batch[name].shape) == shape and batch[name].dtype == dtype, name
        assert VOCAB not in batch[name].shape, f"{name} has a vocabulary-sized dimension"
    for b, ex in enumerate(examples):
        n = len(ex["input_ids"])
        assert batch["input_ids"][b, :n].tolist() == ex["input_ids"]
        assert (batch["input_ids"][b, n:] == 7).all() and (batch["attention_mask"][b, n:] == 0).all()
        assert (batch["attention_mask"][b, :n] == 1).all()
        assert batch["labels"][b, :n].tolist() == ex["input_ids"] and (batch["labels"][b, n:] == -100).all()
        padding = np.isneginf(ex["teacher_logits"])  # ids at -inf entries are normalised to 0
        assert torch.equal(batch["teacher_ids"][b, :n], torch.from_numpy(np.where(padding, 0, ex["teacher_ids"])))
        assert torch.equal(batch["teacher_logits"][b, :n], torch.from_numpy(ex["teacher_logits"]))
        assert torch.isneginf(batch["teacher_logits"][b, n:]).all()
        # per-sequence metric broadcast to every token
        assert torch.equal(batch["teacher_ce"][b, :n], torch.from_numpy(ex["teacher_ce"]).expand(n, 2))


def test_explicit_labels_attention_mask_and_pad_to_multiple():
    ex = make_examples(lengths=(4,))[0]
    ex["labels"] = [-100, 5, 6, 7]
    ex["attention_mask"] = [1, 1, 1, 0]
    batch = FusionDataCollator(pad_to_multiple_of=8)([ex])
    assert batch["input_ids"].shape == (1, 8)
    assert batch["labels"][0, :4].tolist() == [-100, 5, 6, 7]
    assert batch["attention_mask"][0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]


def test_default_labels_ignore_unattended_tokens():
    ex = make_examples(lengths=(4,))[0]
    ex["attention_mask"] = [1, 1, 0, 0]
    batch = FusionDataCollator()([ex])
    assert batch["labels"][0].tolist() == ex["input_ids"][:2] + [-100, -100]


def test_different_k_per_example_is_padded_with_neg_inf():
    a, b = make_examples(lengths=(3, 4))
    b["teacher_ids"], b["teacher_logits"] = b["teacher_ids"][:, :, :2], b["teacher_logits"][:, :, :2]
    batch = FusionDataCollator()([a, b])
    assert batch["teacher_ids"].shape == (2, 4, 2, 4)
    assert torch.isneginf(batch["teacher_logits"][1, :, :, 2:]).all()
    assert torch.equal(batch["teacher_logits"][1, :4, :, :2], torch.from_numpy(b["teacher_logits"]))


def test_metric_levels():
    examples = make_examples(lengths=(3, 5), per_token_ce=True)
    examples[0]["attention_mask"] = [1, 1, 0]
    token = FusionDataCollator(metric_level="token")(examples)
    assert torch.equal(token["teacher_ce"][1, :5], torch.from_numpy(examples[1]["teacher_ce"]))
    seq = FusionDataCollator(metric_level="sequence")(examples)
    # per-token metrics are averaged over the attended tokens of each sequence
    expected0 = examples[0]["teacher_ce"][:2].mean(0)
    assert torch.allclose(seq["teacher_ce"][0, :3], torch.from_numpy(expected0).expand(3, 2))
    with pytest.raises(ValueError, match="metric_level='token' needs per-token teacher_ce"):
        FusionDataCollator(metric_level="token")(make_examples(lengths=(3,)))


def test_packing_concatenates_with_restarting_positions():
    examples = make_examples(lengths=(5, 9, 3))
    batch = FusionDataCollator(packing=True)(examples)
    total = 17
    assert set(batch) == {"input_ids", "labels", "position_ids", "teacher_ids", "teacher_logits", "teacher_ce"}
    assert batch["input_ids"].shape == (1, total) and batch["teacher_ids"].shape == (1, total, 2, 4)
    assert batch["teacher_ce"].shape == (1, total, 2)
    assert batch["position_ids"][0].tolist() == list(range(5)) + list(range(9)) + list(range(3))
    labels = batch["labels"][0].tolist()
    assert labels[0] == labels[5] == labels[14] == -100
    assert labels[1:5] == examples[0]["input_ids"][1:] and labels[6:14] == examples[1]["input_ids"][1:]
    assert batch["input_ids"][0].tolist() == sum((e["input_ids"] for e in examples), [])
    assert torch.equal(batch["teacher_logits"][0, 5:14], torch.from_numpy(examples[1]["teacher_logits"]))
    for value in batch.values():
        assert VOCAB not in value.shape


def test_accepts_tensors_and_numpy():
    ex = make_examples(lengths=(4,))[0]
    as_tensors = {name: torch.as_tensor(np.asarray(v)) for name, v in ex.items()}
    a, b = FusionDataCollator()([ex]), FusionDataCollator()([as_tensors])
    for name in a:
        assert torch.equal(a[name], b[name])


@pytest.mark.parametrize("mutate, error, match", [
    (lambda e: e.pop("teacher_ce"), KeyError, r"missing column\(s\) \['teacher_ce'\]"),
    (lambda e: e.pop("teacher_ids"), KeyError, "teacher_ids"),
    (lambda e: e.update(teacher_ids=e["teacher_ids"][:-1]), ValueError, "teacher_ids has 4 positions, input_ids has 5"),
    (lambda e: e.update(teacher_logits=e["teacher_logits"][:, :, :3]), ValueError, "teacher_logits shape"),
    (lambda e: e.update(labels=[1, 2]), ValueError, "labels has length 2"),
    (lambda e: e.update(teacher_ce=np.array([np.nan, 1.0], dtype=np.float32)), ValueError, "teacher_ce contains NaN"),
    (lambda e: e.update(teacher_ce=np.ones(3, dtype=np.float32)), ValueError, "teacher_ce must have shape"),
    (lambda e: e["teacher_logits"].__setitem__((1, 1, 1), np.nan), ValueError, "teacher_logits contains NaN"),
    (lambda e: e["teacher_ids"].__setitem__((1, 1, 1), VOCAB), ValueError, "outside \\[0, 512\\)"),
    (lambda e: e["teacher_ids"].__setitem__((1, 1, 1), -3), ValueError, "id -3"),
    (lambda e: e.update(input_ids=[]), ValueError, "input_ids is empty"),
    (lambda e: e.update(teacher_ids=e["teacher_ids"].astype(np.float32)), TypeError, "must hold integers"),
    (lambda e: e.update(attention_mask=[0, 2, 1, 1, 1]), ValueError, "only 0 and 1"),
])
def test_bad_examples_raise_clear_errors(mutate, error, match):
    examples = make_examples(lengths=(3, 5))
    mutate(examples[1])
    with pytest.raises(error, match=match) as info:
        FusionDataCollator(vocab_size=VOCAB)(examples)
    assert "example 1" in str(info.value)


def test_teacher_count_must_agree():
    a, = make_examples(lengths=(3,), n_teachers=2)
    b, = make_examples(lengths=(3,), n_teachers=3)
    with pytest.raises(ValueError, match="example 1: has 3 teacher"):
        FusionDataCollator()([a, b])
    with pytest.raises(ValueError, match="example 0: has 2 teacher\\(s\\), expected 3"):
        FusionDataCollator(num_teachers=3)([a])


def test_bad_arguments():
    with pytest.raises(ValueError, match="features must be a non-empty list"):
        FusionDataCollator()([])
    with pytest.raises(ValueError, match="metric_level"):
        FusionDataCollator(metric_level="batch")
    with pytest.raises(ValueError, match="max_length"):
        FusionDataCollator(max_length=2)(make_examples(lengths=(3,)))


def test_ids_beyond_int32_are_rejected_without_a_vocab_size():
    """int64 ids would wrap when written into the int32 batch buffer (2**32 + 5 -> 5)."""
    examples = make_examples(lengths=(3, 5))
    examples[1]["teacher_ids"] = examples[1]["teacher_ids"].astype(np.int64)
    examples[1]["teacher_ids"][2, 0, 1] = 2**32 + 5
    with pytest.raises(ValueError, match=r"example 1: teacher_ids contains id 4294967301 outside \[0, 2\*\*31 "
                                         r".* at position 2, teacher 0, entry 1"):
        FusionDataCollator()(examples)
    examples[1]["teacher_ids"][2, 0, 1] = 2**31 - 1  # the largest id the int32 buffer holds
    assert int(FusionDataCollator()(examples)["teacher_ids"][1, 2, 0, 1]) == 2**31 - 1
    with pytest.raises(ValueError, match=r"id 2147483647 outside \[0, 512\)"):
        FusionDataCollator(vocab_size=VOCAB)(examples)


def test_padding_entries_may_hold_any_id_and_become_zero():
    """Aligners pad their top-k with id -1 (logit -inf): accepted there and normalised to 0, while
    the same id at a valid entry is an error."""
    examples = make_examples(lengths=(3, 5))
    ex = examples[1]
    ex["teacher_logits"][1, 0, 2:] = -np.inf
    ex["teacher_ids"][1, 0, 2:] = [-1, 10**6]
    batch = FusionDataCollator(vocab_size=VOCAB)(examples)
    assert batch["teacher_ids"][1, 1, 0].tolist() == [*ex["teacher_ids"][1, 0, :2].tolist(), 0, 0]
    valid = torch.isfinite(batch["teacher_logits"])
    assert torch.equal(batch["teacher_ids"][valid], torch.from_numpy(np.concatenate(
        [e["teacher_ids"][np.isfinite(e["teacher_logits"])] for e in examples])))
    packed = FusionDataCollator(vocab_size=VOCAB, packing=True)(examples)
    assert packed["teacher_ids"][0, 3 + 1, 0].tolist()[2:] == [0, 0]
    ex["teacher_ids"][1, 0, 1] = -1  # a valid entry (finite logit)
    with pytest.raises(ValueError, match="example 1: teacher_ids contains id -1 .* position 1, teacher 0, entry 1"):
        FusionDataCollator(vocab_size=VOCAB)(examples)


def test_pad_token_id_must_be_chosen():
    with pytest.raises(ValueError, match="pad_token_id is None.*eos_token_id"):
        FusionDataCollator(pad_token_id=None)
    with pytest.raises(TypeError, match="pad_token_id must be an int"):
        FusionDataCollator(pad_token_id="0")
    with pytest.raises(ValueError, match=r"pad_token_id=512 is outside \[0, 512\)"):
        FusionDataCollator(pad_token_id=512, vocab_size=VOCAB)
