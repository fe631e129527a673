import datasets
import numpy as np
import pytest
from datasets import Array3D, Features, List, Value

from fusekernels.pipeline.pack import pack_arrays, pack_sequences

N_TEACHERS, K = 2, 3


def _sequences(lengths, seed=0, per_token=False):
    rng = np.random.default_rng(seed)
    rows = []
    for length in lengths:
        logits = rng.normal(size=(length, N_TEACHERS, K)).astype(np.float32)
        logits[:, :, -1] = -np.inf  # padding entries survive packing
        rows.append({
            "input_ids": rng.integers(0, 100, size=length).astype(np.int32),
            "teacher_ids": rng.integers(0, 100, size=(length, N_TEACHERS, K)).astype(np.int32),
            "teacher_logits": logits,
            "teacher_ce": (rng.uniform(0.5, 3.0, size=(length, N_TEACHERS)) if per_token
                           else rng.uniform(0.5, 3.0, size=N_TEACHERS)).astype(np.float32),
        })
    return rows


def _columns(rows):
    return {name: [r[name] for r in rows] for name in rows[0]}


def test_blocks_and_per_block_metric_mean():
    rows = _sequences([3, 4, 6])
    out = pack_arrays(**_columns(rows), block_size=4)
    assert len(out["input_ids"]) == 3  # 13 tokens -> 3 full blocks, tail of 1 dropped
    ids = np.concatenate([r["input_ids"] for r in rows])
    tids = np.concatenate([r["teacher_ids"] for r in rows])
    tlogits = np.concatenate([r["teacher_logits"] for r in rows])
    per_token = np.concatenate([np.tile(r["teacher_ce"], (len(r["input_ids"]), 1)) for r in rows])
    for b in range(3):
        block = slice(4 * b, 4 * b + 4)
        assert np.array_equal(out["input_ids"][b], ids[block])
        assert np.array_equal(out["teacher_ids"][b], tids[block])
        assert np.array_equal(out["teacher_logits"][b], tlogits[block])
        np.testing.assert_allclose(out["teacher_ce"][b], per_token[block].mean(0), rtol=1e-6)
    # block 0 = 3 tokens of sequence 0 and 1 token of sequence 1: a token-weighted mean
    expected = (3 * rows[0]["teacher_ce"] + rows[1]["teacher_ce"]) / 4
    np.testing.assert_allclose(out["teacher_ce"][0], expected, rtol=1e-6)


def test_keep_tail_and_token_level_metrics():
    rows = _sequences([3, 4, 6], per_token=True)
    out = pack_arrays(**_columns(rows), block_size=4, drop_last=False, metric_level="token")
    assert [len(x) for x in out["input_ids"]] == [4, 4, 4, 1]
    per_token = np.concatenate([r["teacher_ce"] for r in rows])
    assert np.array_equal(np.concatenate(out["teacher_ce"]), per_token)
    assert out["teacher_ce"][3].shape == (1, N_TEACHERS)


def test_dataset_packing_matches_arrays_and_feeds_the_collator():
    rows = _sequences([5, 9, 2, 7, 8], seed=1)
    features = Features({
        "input_ids": List(Value("int32")),
        "teacher_ids": Array3D(shape=(None, N_TEACHERS, K), dtype="int32"),
        "teacher_logits": Array3D(shape=(None, N_TEACHERS, K), dtype="float16"),
        "teacher_ce": List(Value("float32")),
    })
    ds = datasets.Dataset.from_dict({**_columns(rows), "text": ["t"] * len(rows)}, features=Features(
        {**features, "text": Value("string")}))
    packed = pack_sequences(ds, block_size=6, batch_size=3)  # map batches of 3 rows, as group_texts
    # batch 1: 5+9+2 = 16 tokens -> 2 blocks; batch 2: 7+8 = 15 -> 2 blocks
    assert len(packed) == 4 and packed.column_names == ["input_ids", "teacher_ids", "teacher_logits", "teacher_ce"]
    assert packed.features["teacher_logits"].dtype == "float16" and packed.features["teacher_ids"].dtype == "int32"
    stored = ds.with_format("numpy")
    expected = pack_arrays(*(list(stored[:3][c]) for c in ("input_ids", "teacher_ids", "teacher_logits", "teacher_ce")),
                           block_size=6)
    got = packed.with_format("numpy")
    for b in range(2):
        assert np.array_equal(got[b]["input_ids"], expected["input_ids"][b])
        assert np.array_equal(got[b]["teacher_ids"], expected["teacher_ids"][b])
        assert np.array_equal(got[b]["teacher_logits"], expected["teacher_logits"][b])
        np.testing.assert_allclose(got[b]["teacher_ce"], expected["teacher_ce"][b], rtol=1e-6)

    collator = pytest.importorskip("fusekernels.integration.collator")
    batch = collator.FusionDataCollator(pad_token_id=0, num_teachers=N_TEACHERS, vocab_size=100)(
        [packed[i] for i in range(len(packed))])
    assert tuple(batch["teacher_ids"].shape) == (4, 6, N_TEACHERS, K)
    assert tuple(batch["teacher_ce"].shape) == (4, 6, N_TEACHERS)
    assert bool(batch["teacher_logits"][..., -1].isneginf().all())


def test_bad_inputs():
    rows = _sequences([3, 4])
    cols = _columns(rows)
    with pytest.raises(ValueError, match="row 1: teacher_ids"):
        pack_arrays(cols["input_ids"], [cols["teacher_ids"][0], cols["teacher_ids"][0]], cols["teacher_logits"],
                    cols["teacher_ce"], block_size=2)
    with pytest.raises(ValueError, match=r"teacher_ce must be \[2\] or \[3, 2\]"):
        pack_arrays(cols["input_ids"], cols["teacher_ids"], cols["teacher_logits"],
                    [np.zeros(3, np.float32), cols["teacher_ce"][1]], block_size=2)
    with pytest.raises(ValueError, match="NaN"):
        pack_arrays(cols["input_ids"], cols["teacher_ids"], cols["teacher_logits"],
                    [np.array([np.nan, 1], np.float32), cols["teacher_ce"][1]], block_size=2)
    with pytest.raises(ValueError, match="block_size"):
        pack_arrays(**cols, block_size=0)
    with pytest.raises(ValueError, match="metric_level"):
        pack_arrays(**cols, block_size=2, metric_level="batch")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['teacher_ce'\]"):
        pack_sequences(datasets.Dataset.from_dict({"input_ids": [[1]], "teacher_ids": [[[[1]]]],
                                                   "teacher_logits": [[[[1.0]]]]}), block_size=2)
