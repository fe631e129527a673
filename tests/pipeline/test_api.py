"""build_fusion_dataset: texts + student tokenizer + teachers -> packed FusionTrainer data, with
tiny random teachers on three different real tokenizers."""
import datasets
import numpy as np
import pytest

from fusekernels.pipeline import (
    align_teachers,
    build_fusion_dataset,
    extract_teacher_topk,
    pack_sequences,
    split_long_texts,
    tokenize_texts,
)

from .helpers import log_lines, make_tiny_llama


def _asset(name):
    assets = pytest.importorskip("fusekernels.tokenization.assets")
    try:
        return assets.load_tokenizer(name) if name != "kjv" else assets.kjv_verses(24, start=100)
    except assets.AssetUnavailable as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def setup():
    student, gpt2, qwen = _asset("mistral-v1"), _asset("gpt2"), _asset("qwen")
    texts = _asset("kjv") + ["def f(x):\n    return x ** 2  # 你好"]
    teachers = [(make_tiny_llama(len(gpt2), seed=1, hidden=16, layers=1), gpt2),
                (make_tiny_llama(len(qwen), seed=2, hidden=16, layers=1), qwen)]
    return student, teachers, texts


def test_one_call_equals_the_steps(setup, tmp_path):
    student, teachers, texts = setup
    with log_lines([]) as lines:  # the cache decisions are logged (fusekernels.pipeline.cache, info)
        packed, report = build_fusion_dataset(texts, student, teachers, block_size=64, k=4, cache=tmp_path,
                                              teacher_names=["gpt2", "qwen"], progress=False, return_report=True)
    # the same chain by hand
    data = split_long_texts(datasets.Dataset.from_dict({"text": texts}), [student] + [t for _, t in teachers], 64)
    rows = [extract_teacher_topk(m, t, data, k=4, max_length=64, progress=False, per_token_ce=True)
            for m, t in teachers]
    aligned = align_teachers(tokenize_texts(student, data, max_length=64), rows, base_tokenizer=student,
                             teacher_tokenizers=[t for _, t in teachers], include_base_teacher=False,
                             fallback="absent", k=4)
    expected = pack_sequences(aligned, 64)
    assert packed.column_names == expected.column_names and len(packed) == len(expected) == report.blocks > 0
    for col in expected.column_names:
        for a, b in zip(packed[col], expected[col]):
            np.testing.assert_array_equal(np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32))
    assert np.asarray(packed[0]["teacher_ids"]).shape == (64, 2, 4)
    assert {"teacher_chunk_span", "teacher_chunk_logprob", "teacher_token_ce"} <= set(packed.column_names)
    # the chunk columns of the first aligned row are those of aligned_chunks on that row
    from fusekernels.tokenization.chunks import aligned_chunks
    from fusekernels.tokenization.profile import TokenizerProfile

    base = TokenizerProfile.from_tokenizer(student)
    for t, (_, tok) in enumerate(teachers):
        got = aligned_chunks(aligned[0]["input_ids"], rows[t][0]["input_ids"], rows[t][0]["per_step_metric_ce"], base,
                             TokenizerProfile.from_tokenizer(tok), text=data[0]["text"])
        assert np.array_equal(np.asarray(aligned[0]["teacher_chunk_span"])[:, t], got.span)
        np.testing.assert_allclose(np.asarray(aligned[0]["teacher_chunk_logprob"])[:, t], got.logprob)
        assert got.span.sum() > 0
    assert [t["name"] for t in report.teachers] == ["gpt2", "qwen"]
    assert all(t["cache"] == "computed" and 0 < t["coverage"] <= 1 and t["tokens"] > 0 for t in report.teachers)
    assert report.student_positions == sum(len(x) for x in aligned["input_ids"])
    assert set(report.stages) == {"split", "align", "pack"} and report.texts == len(data)
    assert len(lines) == 2 and all("written to the cache" in line for line in lines)

    again, report2 = build_fusion_dataset(datasets.Dataset.from_dict({"text": texts, "id": list(range(len(texts)))}),
                                          student, teachers, block_size=64, k=4, cache=tmp_path, progress=False,
                                          return_report=True)
    assert [t["cache"] for t in report2.teachers] == ["reused", "reused"]
    assert again["input_ids"] == packed["input_ids"]


def test_base_model_is_teacher_zero(setup, tmp_path):
    student, teachers, texts = setup
    base = make_tiny_llama(len(student), seed=3, hidden=16, layers=1)
    packed, report = build_fusion_dataset(texts[:6], student, teachers[:1], base_model=base, block_size=48, k=3,
                                          split_margin=16, cache=False, progress=False, return_report=True)
    assert np.asarray(packed[0]["teacher_ids"]).shape == (48, 2, 3)
    assert report.teachers[0]["name"] == "base" and report.teachers[0]["coverage"] == 1.0
    assert report.teachers[0]["cache"] == "disabled"
    assert 0 < report.teachers[1]["coverage"] < 1


def test_bad_arguments(setup):
    student, teachers, texts = setup
    with pytest.raises(TypeError, match="texts must be"):
        build_fusion_dataset("one text", student, teachers)
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        build_fusion_dataset(["a", 3], student, teachers)
    with pytest.raises(ValueError, match="texts is empty"):
        build_fusion_dataset([], student, teachers)
    with pytest.raises(ValueError, match=r"teachers\[0\] must be a \(model, tokenizer\) pair"):
        build_fusion_dataset(texts, student, [teachers[0][0]])
    with pytest.raises(ValueError, match="nothing to fuse"):
        build_fusion_dataset(texts, student, [])
    with pytest.raises(ValueError, match="teacher_names has 1"):
        build_fusion_dataset(texts, student, teachers, teacher_names=["a"])
    with pytest.raises(ValueError, match="fewer than one block"):
        build_fusion_dataset(texts[:1], student, teachers[:1], block_size=4096, cache=False, progress=False)


def test_cli_prepare_two_teachers(tmp_path, capsys):
    from fusekernels.cli import main

    from .helpers import make_char_tokenizer
    _asset("mistral-v1")
    char = make_char_tokenizer()
    for name, seed in (("t1", 1), ("t2", 2)):
        make_tiny_llama(len(char), seed=seed, hidden=16, layers=1).save_pretrained(tmp_path / name)
        char.save_pretrained(tmp_path / name)
    (tmp_path / "docs.txt").write_text("\n".join(_asset("kjv")[:8]) + "\n")
    args = ["prepare", "--data", tmp_path / "docs.txt", "--student-tokenizer", "mistral-v1", "--teacher",
            tmp_path / "t1", "--teacher", tmp_path / "t2", "--block-size", "64", "--k", "3",
            "--cache-dir", tmp_path / "cache", "--out", tmp_path / "packed"]
    assert main([str(a) for a in args]) == 0
    first = capsys.readouterr().out
    assert "(computed)" in first and "blocks of 64 tokens" in first
    packed = datasets.load_from_disk(str(tmp_path / "packed"))
    assert np.asarray(packed[0]["teacher_ids"]).shape == (64, 2, 3)
    args[-1] = tmp_path / "packed2"
    assert main([str(a) for a in args]) == 0
    assert "(reused)" in capsys.readouterr().out
    assert main([str(a) for a in args]) == 2  # non-empty output refused before any work
    assert "not empty" in capsys.readouterr().err
    assert main([str(a) for a in args[:-1]] + [str(tmp_path / "p3"), "--teacher-tokenizer", "mistral-v1"]) == 2
    assert "2 --teacher but 1 --teacher-tokenizer" in capsys.readouterr().err


def test_bad_rows_of_cached_teacher_outputs_do_not_suggest_dropping_rows(tmp_path):
    """A teacher whose model does not match its tokenizer (ids beyond the tokenizer's vocabulary):
    prepare names the cache entry and how to recompute it, never ``--on-bad-row skip`` (an option
    prepare does not even have, which would drop rows)."""
    from .helpers import make_char_tokenizer

    tok = make_char_tokenizer()
    wrong = make_tiny_llama(len(tok) + 200, seed=3)  # its top-k reaches ids the tokenizer lacks
    texts = ["In the beginning God created the heaven and the earth."] * 4
    with pytest.raises(ValueError, match="row 0: ") as err:
        build_fusion_dataset(texts, tok, [(wrong, tok)], block_size=64, split_margin=8, k=4, cache=tmp_path / "cache",
                             progress=False)
    message = str(err.value)
    assert "skip" not in message and "cache entries" in message and str(tmp_path / "cache") in message
