"""Reliability of the pipeline steps (issue: never lose or silently corrupt data): resumed
extraction checks every output-shaping option, align skips and counts bad rows, damaged inputs
raise one named error."""
import copy
import json
import zipfile

import datasets
import numpy as np
import pytest
import torch

from fusekernels.pipeline.align_step import align_teachers, find_bad_rows
from fusekernels.pipeline.extract import extract_teacher_topk
from fusekernels.storage import DamagedFileError

from .helpers import log_lines, make_char_tokenizer

TEXTS = ["In the beginning God created the heaven and the earth.", "And God said, Let there be light",
         "And the evening and the morning were the first day. " * 2, "Amen.", "Selah", "and it was so"]


@pytest.fixture(scope="module")
def texts():
    return datasets.Dataset.from_dict({"text": TEXTS})


def _extract(model, tok, texts, out, **kw):
    opts = dict(k=3, max_length=48, shard_size=2, batch_size=2, output_dir=out, progress=False)
    opts.update(kw)
    return extract_teacher_topk(model, tok, texts, **opts)


def _half_done(model, tok, texts, out):
    """A finished run with one shard removed: what an interrupted run leaves."""
    _extract(model, tok, texts, out)
    import shutil

    shutil.rmtree(out / "shard-00002")


def test_resume_says_how_much_was_done(tiny_llama, char_tokenizer, texts, tmp_path):
    _half_done(tiny_llama, char_tokenizer, texts, tmp_path)
    with log_lines([]) as lines:
        out = _extract(tiny_llama, char_tokenizer, texts, tmp_path)
    assert any("resuming: 2 of 3 shards done" in line for line in lines)
    fresh = extract_teacher_topk(tiny_llama, char_tokenizer, texts, k=3, max_length=48, batch_size=2, progress=False)
    assert out["topk_ids"] == fresh["topk_ids"]


@pytest.mark.parametrize("change", ["dtype", "batch_size", "tokenizer", "weights", "pad"])
def test_resume_refuses_any_output_shaping_change(tiny_llama, char_tokenizer, texts, tmp_path, change):
    _half_done(tiny_llama, char_tokenizer, texts, tmp_path)
    model, tok, kw = tiny_llama, char_tokenizer, {}
    if change == "dtype":
        model, expected = copy.deepcopy(tiny_llama).to(torch.bfloat16), "--dtype"
    elif change == "batch_size":
        kw, expected = {"batch_size": 3}, "--batch-size"
    elif change == "tokenizer":
        tok = make_char_tokenizer()  # same vocabulary, another normaliser: other ids for the same texts
        from tokenizers import normalizers

        tok.backend_tokenizer.normalizer = normalizers.Lowercase()
        expected = "--tokenizer"
    elif change == "weights":
        model = copy.deepcopy(tiny_llama)
        with torch.no_grad():
            model.lm_head.weight[0, 0] += 1.0
        expected = "--model (weights)"
    else:
        tok = make_char_tokenizer()
        tok.pad_token = tok.eos_token
        expected = "pad id"
    with pytest.raises(ValueError, match="cannot resume with another") as err:
        _extract(model, tok, texts, tmp_path, **kw)
    assert expected in str(err.value)
    assert sorted(p.name for p in tmp_path.glob("shard-*")) == ["shard-00000", "shard-00001"]  # untouched


def test_failed_shard_write_leaves_no_partial_shard(tiny_llama, char_tokenizer, texts, tmp_path, monkeypatch):
    calls = []

    def full_disk(self, path, *args, **kwargs):
        calls.append(path)
        import os

        os.makedirs(path, exist_ok=True)
        (__import__("pathlib").Path(path) / "data-00000-of-00001.arrow").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", full_disk)
    with pytest.raises(OSError, match="No space left"):
        _extract(tiny_llama, char_tokenizer, texts, tmp_path)
    assert calls and sorted(p.name for p in tmp_path.iterdir()) == ["extract_meta.json"]


# ---------------------------------------------------------------------------------------- align
def _aligned_inputs(tiny_llama, char_tokenizer):
    teacher = extract_teacher_topk(tiny_llama, char_tokenizer, datasets.Dataset.from_dict({"text": TEXTS}),
                                   k=3, max_length=200, progress=False)
    return teacher


def test_align_skips_and_counts_bad_rows(tiny_llama, char_tokenizer):
    teacher = _aligned_inputs(tiny_llama, char_tokenizer)
    base = teacher
    # row 1: the teacher covers another text; row 3: a top-k id outside the vocabulary
    bad_teacher = teacher.map(lambda row, i: {
        "input_ids": row["input_ids"][:-4] + row["input_ids"][-3:] if i == 1 else row["input_ids"],
        "topk_ids": [[len(char_tokenizer) + 5] * 3] * len(row["topk_ids"]) if i == 3 else row["topk_ids"]},
        with_indices=True)
    bad_teacher = bad_teacher.map(lambda row, i: {"topk_logits": row["topk_logits"][:len(row["input_ids"])],
                                                  "topk_ids": row["topk_ids"][:len(row["input_ids"])]},
                                  with_indices=True)
    kw = dict(base_tokenizer=char_tokenizer, teacher_tokenizers=[char_tokenizer], check="length",
              include_base_teacher=True, fallback="published")
    with pytest.raises(ValueError, match="on-bad-row skip"):
        align_teachers(base, [bad_teacher], **kw)
    with pytest.warns(UserWarning, match="skipped 2 of 6 rows"):
        out, skipped = align_teachers(base, [bad_teacher], on_bad_row="skip", return_skipped=True, **kw)
    assert [r for r, _ in skipped] == [1, 3]
    assert "same text" in skipped[0][1] and "outside" in skipped[1][1]
    assert len(out) == 4 and out["text"] == [TEXTS[i] for i in (0, 2, 4, 5)]
    good = align_teachers(base, [teacher], **kw)
    assert out["teacher_ids"] == [good["teacher_ids"][i] for i in (0, 2, 4, 5)]
    with pytest.raises(ValueError, match="on_bad_row"):
        align_teachers(base, [teacher], on_bad_row="ignore", **kw)
    with pytest.raises(ValueError, match="check must be"):
        align_teachers(base, [teacher], check="loose", base_tokenizer=char_tokenizer,
                       teacher_tokenizers=[char_tokenizer], include_base_teacher=True, fallback="published")


def test_find_bad_rows_flags_infinite_logits(tiny_llama, char_tokenizer):
    from fusekernels.tokenization.profile import TokenizerProfile

    teacher = _aligned_inputs(tiny_llama, char_tokenizer)
    broken = teacher.map(lambda row, i: {"topk_logits": [[float("inf")] * 3] * len(row["topk_logits"])
                                         if i == 2 else row["topk_logits"]}, with_indices=True)
    profile = TokenizerProfile.from_tokenizer(char_tokenizer)
    bad = find_bad_rows(teacher, [broken], base_profile=profile, teacher_profiles=[profile])
    assert [r for r, _ in bad] == [2] and "inf" in bad[0][1]


# ------------------------------------------------------------------------------- damaged files
def _vocab_map(tmp_path, char_tokenizer):
    from fusekernels.tokenization.vocab_map import build_vocab_map

    vmap = build_vocab_map(char_tokenizer, char_tokenizer)
    vmap.save_npz(tmp_path / "map.npz")
    return vmap


def test_damaged_npz_raises_one_named_error(tmp_path, char_tokenizer):
    from fusekernels.tokenization.vocab_map import VocabMap

    _vocab_map(tmp_path, char_tokenizer)
    raw = (tmp_path / "map.npz").read_bytes()
    cases = {"truncated.npz": raw[: len(raw) // 2], "tail_cut.npz": raw[:-30], "empty.npz": b"",
             "garbage.npz": b"PK\x03\x04" + bytes(200)}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    # a member whose compressed bytes are corrupted (zlib.error in numpy)
    with zipfile.ZipFile(tmp_path / "map.npz") as src, zipfile.ZipFile(tmp_path / "corrupt.npz", "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info.filename))
    blob = bytearray((tmp_path / "corrupt.npz").read_bytes())
    blob[60:90] = bytes(30)
    (tmp_path / "corrupt.npz").write_bytes(bytes(blob))
    cases["corrupt.npz"] = None
    for name in cases:
        with pytest.raises(DamagedFileError, match=name):
            VocabMap.load_npz(tmp_path / name, char_tokenizer, char_tokenizer)


def test_npz_with_bad_arrays_is_refused(tmp_path, char_tokenizer):
    from fusekernels.tokenization.vocab_map import VocabMap

    vmap = _vocab_map(tmp_path, char_tokenizer)
    for name, ids in {"short": vmap.base_ids[:-3], "all_minus_one": np.full_like(vmap.base_ids, -1),
                      "too_big": vmap.base_ids + 1000}.items():
        bad = VocabMap(keys=vmap.keys, base_ids=ids, distances=vmap.distances[:len(ids)],
                       base_tokens=vmap.base_tokens)
        bad.save_npz(tmp_path / f"{name}.npz")
        with pytest.raises(DamagedFileError, match=f"{name}.npz"):
            VocabMap.load_npz(tmp_path / f"{name}.npz", char_tokenizer, char_tokenizer)
    assert VocabMap.load_npz(tmp_path / "map.npz", char_tokenizer, char_tokenizer).base_ids.tolist() == \
        vmap.base_ids.tolist()


def test_json_map_that_is_not_an_object(tmp_path, char_tokenizer):
    from fusekernels.tokenization.vocab_map import VocabMap

    (tmp_path / "list.json").write_text(json.dumps(["a", "b"]))
    (tmp_path / "broken.json").write_text('{"a": ')
    for name in ("list.json", "broken.json"):
        with pytest.raises(DamagedFileError, match=name):
            VocabMap.load_json(tmp_path / name, char_tokenizer, char_tokenizer)


def test_damaged_datasets_raise_one_named_error(tmp_path):
    from fusekernels.pipeline.io import load_rows

    ds = datasets.Dataset.from_dict({"text": ["abc" * 100] * 50})
    ds.save_to_disk(str(tmp_path / "saved"))
    shard = next((tmp_path / "saved").glob("*.arrow"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    (tmp_path / "broken.jsonl").write_text('{"text": "a"}\n{"text": "b"\n')
    for name in ("saved", "broken.jsonl"):
        with pytest.raises(DamagedFileError, match=name):
            load_rows(tmp_path / name)


# ------------------------------------------------------------------------------- map cache
def _on_disk(dataset, path):
    dataset.save_to_disk(str(path))
    return datasets.load_from_disk(str(path))


def test_damaged_map_cache_files_are_named_and_recomputed(tiny_llama, char_tokenizer, tmp_path, monkeypatch, caplog):
    """A truncated ``pack-*.arrow`` and a ``split-*.arrow`` with changed bytes in the user cache:
    named in one log line and recomputed (before: "Expected to be able to read ..." / a utf-8
    error on every later run, or silently changed texts)."""
    import logging

    from fusekernels.pipeline.align_step import align_teachers
    from fusekernels.pipeline.pack import pack_sequences
    from fusekernels.pipeline.split import split_long_texts

    monkeypatch.setenv("FUSEKERNELS_CACHE", str(tmp_path / "cache"))
    maps = tmp_path / "cache" / "datasets"
    texts = _on_disk(datasets.Dataset.from_dict({"text": TEXTS * 3}), tmp_path / "texts")
    split = split_long_texts(texts, [char_tokenizer], 40, margin=8)
    expected_texts = list(split["text"])
    (split_file,) = maps.glob("split-*.arrow")
    _replace_once(split_file, b"beginning", b"beg\xffnning")  # invalid UTF-8, same length
    caplog.set_level(logging.WARNING, logger="fusekernels")
    again = split_long_texts(texts, [char_tokenizer], 40, margin=8)
    assert list(again["text"]) == expected_texts
    assert any(split_file.name in r.getMessage() and "recomputing" in r.getMessage() for r in caplog.records)

    teacher = _on_disk(extract_teacher_topk(tiny_llama, char_tokenizer, again, k=3, max_length=64, progress=False),
                       tmp_path / "teacher")
    aligned = align_teachers(teacher, [teacher], base_tokenizer=char_tokenizer, teacher_tokenizers=[char_tokenizer],
                             include_base_teacher=True, fallback="published")
    packed = pack_sequences(aligned, 16)
    expected = packed.with_format("numpy")[:]
    (pack_file,) = maps.glob("pack-*.arrow")
    pack_file.write_bytes(pack_file.read_bytes()[: pack_file.stat().st_size // 2])
    caplog.clear()
    repacked = pack_sequences(aligned, 16).with_format("numpy")[:]
    for column in ("input_ids", "teacher_ids", "teacher_logits"):
        assert all(np.array_equal(a, b) for a, b in zip(repacked[column], expected[column])), column
    assert any(pack_file.name in r.getMessage() and "bytes where" in r.getMessage() for r in caplog.records)


def _replace_once(path, old: bytes, new: bytes):
    data = path.read_bytes()
    assert data.count(old) >= 1
    path.write_bytes(data.replace(old, new, 1))


# -------------------------------------------------------------------------- extraction
def test_two_runs_on_one_output_do_not_collide(tiny_llama, char_tokenizer, texts, tmp_path, monkeypatch):
    """A second extraction into the same folder while the first is writing its first shard (before:
    both used ``.shard-00000.tmp0``, the second removed the first's temporary and the first failed)."""
    from pathlib import Path

    real_save, raced = datasets.Dataset.save_to_disk, []

    def save_then_race(self, path, *args, **kwargs):
        real_save(self, path, *args, **kwargs)
        if not raced and Path(path).name.startswith(".shard-00000"):
            raced.append(path)
            _extract(tiny_llama, char_tokenizer, texts, tmp_path)  # the other run, start to finish

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", save_then_race)
    out = _extract(tiny_llama, char_tokenizer, texts, tmp_path)
    assert raced
    fresh = extract_teacher_topk(tiny_llama, char_tokenizer, texts, k=3, max_length=48, batch_size=2, progress=False)
    assert out["topk_ids"] == fresh["topk_ids"] and out["input_ids"] == fresh["input_ids"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["extract_meta.json", "shard-00000", "shard-00001",
                                                          "shard-00002"]


def test_resume_and_load_name_a_damaged_shard(tiny_llama, char_tokenizer, texts, tmp_path):
    import shutil

    from fusekernels.pipeline.extract import load_extracted

    _extract(tiny_llama, char_tokenizer, texts, tmp_path)
    arrow = next((tmp_path / "shard-00001").glob("*.arrow"))
    blob = bytearray(arrow.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    arrow.write_bytes(bytes(blob))
    with pytest.raises(DamagedFileError, match=arrow.name):
        load_extracted(tmp_path)
    shutil.rmtree(tmp_path / "shard-00002")  # an interrupted run, resumed: stops before computing more
    with pytest.raises(DamagedFileError, match=arrow.name):
        _extract(tiny_llama, char_tokenizer, texts, tmp_path)
    assert not (tmp_path / "shard-00002").exists()


def _scaled(model, factor):
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        scaled.lm_head.weight.mul_(factor)
    return scaled


def test_float16_overflow_is_refused_at_extraction(tiny_llama, char_tokenizer, texts, tmp_path):
    """Logits of about 1e5 used to be stored as +inf with exit 0 (and cached by prepare)."""
    from fusekernels.pipeline.cache import cached_extract

    loud = _scaled(tiny_llama, 1e6)
    with pytest.raises(ValueError, match=r"row \d+: .*float16 range.*logits_dtype='float32'"):
        _extract(loud, char_tokenizer, texts, tmp_path / "out")
    with pytest.raises(ValueError, match="float16 range"):
        cached_extract(loud, char_tokenizer, texts, k=3, max_length=48, cache=tmp_path / "cache", progress=False)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.is_dir() and "." not in p.name]  # nothing cached
    wide = extract_teacher_topk(loud, char_tokenizer, texts, k=3, max_length=48, logits_dtype="float32",
                                progress=False)
    values = np.concatenate([np.asarray(v, dtype=np.float32).reshape(-1) for v in wide["topk_logits"]])
    assert np.isfinite(values).all() and np.abs(values).max() > 65504
    nan_model = _scaled(tiny_llama, float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        extract_teacher_topk(nan_model, char_tokenizer, texts, k=3, max_length=48, progress=False)


def test_align_errors_name_the_dataset_row(tiny_llama, char_tokenizer):
    """A bad row deep in the data (row 33 of 40, batches of 8): the error names row 33."""
    rows = datasets.Dataset.from_dict({"text": [f"row {i} and some text" for i in range(40)]})
    teacher = extract_teacher_topk(tiny_llama, char_tokenizer, rows, k=3, max_length=64, progress=False)
    bad = teacher.map(lambda r, i: {"topk_ids": [[len(char_tokenizer) + 5] * 3] * len(r["topk_ids"])
                                    if i == 33 else r["topk_ids"]}, with_indices=True)
    with pytest.raises(ValueError, match=r"^row 33: .*outside") as err:
        align_teachers(teacher, [bad], base_tokenizer=char_tokenizer, teacher_tokenizers=[char_tokenizer],
                       batch_size=8, include_base_teacher=True, fallback="published")
    assert "on-bad-row skip" in str(err.value)
    with pytest.raises(ValueError, match=r"^row 33: .*; recompute it") as err:
        align_teachers(teacher, [bad], base_tokenizer=char_tokenizer, teacher_tokenizers=[char_tokenizer],
                       batch_size=8, bad_row_hint="recompute it", include_base_teacher=True, fallback="published")
    assert "skip" not in str(err.value)
