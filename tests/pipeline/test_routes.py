"""``fusekernels prepare`` and the step-by-step route (split -> extract -> align -> pack) give the
same packed dataset for the same options, with their defaults and with each non-default option
that shapes the data."""
import json
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402

from fusekernels.cli import main  # noqa: E402

from .helpers import PRINTABLE, asset, make_char_tokenizer, make_tiny_llama  # noqa: E402

BLOCK = 64
TEXTS = ["In the beginning God created the heaven and the earth.",
         "And the earth was without form, and void; and darkness was upon the face of the deep. " * 2,
         "And the Spirit of God moved upon the face of the waters.",
         "And God said, Let there be light: and there was light."]


def _run(*argv) -> int:
    return main([str(a) for a in argv])


def _bos_char_tokenizer():
    """One token per character, with a <bos> put before every text (as Gemma / Llama-3 tokenizers do)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<eos>": 0, "<pad>": 1, "<bos>": 2}
    for ch in PRINTABLE:
        vocab.setdefault(ch, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tk.decoder = decoders.Fuse()
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<pad>", bos_token="<bos>")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A student (tiny Llama, Mistral tokenizer) and two teachers with their own tokenizers:
    ``chars`` (no start token) and ``bos_chars`` (a <bos> before each text)."""
    student_tok = asset("load_tokenizer", "mistral-v1")
    root = tmp_path_factory.mktemp("routes")
    for name, tok, seed in (("chars", make_char_tokenizer(), 1), ("bos_chars", _bos_char_tokenizer(), 2),
                            ("student", student_tok, 3)):
        make_tiny_llama(len(tok), seed=seed, hidden=16, layers=1).save_pretrained(root / name)
        tok.save_pretrained(root / name)
    with open(root / "docs.jsonl", "w") as fh:
        for i, text in enumerate(TEXTS):
            fh.write(json.dumps({"text": text, "id": i}) + "\n")
    return root


def _prepare(w, out, *flags, docs="docs.jsonl"):
    base = ["--base-model", w / "student"] if "--base-teacher" in flags else []
    cache = [] if "--cache-dir" in flags else ["--no-cache"]
    assert _run("prepare", "--data", w / docs, "--student-tokenizer", w / "student", "--teacher",
                w / "chars", "--teacher", w / "bos_chars", "--block-size", BLOCK, *cache, *base, *flags,
                "--out", out) == 0
    return datasets.load_from_disk(str(out))


def _steps(w, out, *flags, docs="docs.jsonl"):
    """The same run as :func:`_prepare`, one command per step; ``flags`` go to the commands that take them."""
    extract_flags = [f for f in flags if f in ("--start-tokens", "model", "published", "--no-per-token-ce")]
    align_flags = [f for f in flags if f == "--base-teacher"]
    assert _run("split", "--data", w / docs, "--tokenizer", w / "student", w / "chars", w / "bos_chars",
                "--block-size", BLOCK, "--out", out / "split") == 0
    models = ["chars", "bos_chars"] + (["student"] if align_flags else [])
    for name in models:
        assert _run("extract", "--model", w / name, "--data", out / "split", "--max-length", BLOCK, *extract_flags,
                    "--out", out / f"topk_{name}") == 0
    base = ["--base", out / "topk_student"] if align_flags else ["--base", out / "split", "--max-length", BLOCK]
    assert _run("align", *base, "--base-tokenizer", w / "student", "--teacher", out / "topk_chars",
                "--teacher-tokenizer", w / "chars", "--teacher", out / "topk_bos_chars", "--teacher-tokenizer",
                w / "bos_chars", *align_flags, "--out", out / "aligned") == 0
    assert _run("pack", "--data", out / "aligned", "--block-size", BLOCK, "--out", out / "packed") == 0
    return datasets.load_from_disk(str(out / "packed"))


def _assert_same(a, b):
    assert a.column_names == b.column_names and len(a) == len(b) > 0
    for name in a.column_names:
        np.testing.assert_array_equal(np.asarray(a.with_format("numpy")[name]),
                                      np.asarray(b.with_format("numpy")[name]), err_msg=name)


ROUTES = {}  # flags -> the prepare dataset (the steps' one is checked equal to it)


@pytest.mark.parametrize("flags", [(), ("--base-teacher",), ("--start-tokens", "published"),
                                   ("--no-per-token-ce",)], ids=["defaults", "base-teacher", "published-start",
                                                                 "no-per-token-ce"])
def test_both_routes_build_the_same_dataset(workspace, tmp_path, flags):
    prepared = _prepare(workspace, tmp_path / "prepared", *flags)
    stepped = _steps(workspace, tmp_path, *flags)
    _assert_same(prepared, stepped)
    ROUTES[flags] = prepared


def test_cached_prepare_matches_the_steps_over_several_shards(workspace, tmp_path):
    """prepare through its cache (entries written in shards) against the steps, with more texts
    than one extraction shard."""
    from fusekernels.pipeline import defaults

    with open(workspace / "many.jsonl", "w") as fh:
        fh.writelines(json.dumps({"text": f"{i}: {text}"}) + "\n" for i, text in enumerate(TEXTS * 12))
    prepared = _prepare(workspace, tmp_path / "prepared", "--cache-dir", tmp_path / "cache", docs="many.jsonl")
    stepped = _steps(workspace, tmp_path, docs="many.jsonl")
    assert len(datasets.load_from_disk(str(tmp_path / "split"))) > defaults.SHARD_SIZE
    _assert_same(prepared, stepped)


def test_non_default_flags_change_the_data_the_same_way(workspace):
    if len(ROUTES) < 4:
        pytest.skip("needs every case of test_both_routes_build_the_same_dataset (run the module)")
    default = ROUTES[()]

    def teachers(d):
        return np.asarray(d[0]["teacher_ids"]).shape[1]

    def logits(d, t):
        return np.asarray(d.with_format("numpy")["teacher_logits"])[:, :, t]

    assert teachers(default) == 2  # base teacher off by default
    assert teachers(ROUTES[("--base-teacher",)]) == 3  # the student's own top-k is teacher 0
    chunk_columns = {"teacher_chunk_span", "teacher_chunk_logprob", "teacher_token_ce"}
    assert chunk_columns <= set(default.column_names)  # per-token CE on by default
    assert not chunk_columns & set(ROUTES[("--no-per-token-ce",)].column_names)
    published = ROUTES[("--start-tokens", "published")]
    assert published["input_ids"] == default["input_ids"]  # the student's tokens do not change
    # the teacher without start tokens sees the same input either way; the <bos> one does not
    np.testing.assert_array_equal(logits(published, 0), logits(default, 0))
    assert not np.array_equal(logits(published, 1), logits(default, 1))


def test_extract_names_its_model_and_resumes_only_with_the_same_start_tokens(workspace, tmp_path, capsys):
    w = workspace
    argv = ["extract", "--model", w / "bos_chars", "--data", w / "docs.jsonl", "--max-length", BLOCK,
            "--out", tmp_path / "topk"]
    assert _run(*argv) == 0
    assert "extract bos_chars shard 1/1" in capsys.readouterr().err
    rows = datasets.load_from_disk(str(tmp_path / "topk" / "shard-00000"))
    assert rows[0]["input_ids"][0] != 2  # outputs kept on the text's own tokens, without the <bos>
    assert _run(*argv) == 0  # same options: resumes (nothing left to do)
    assert _run(*argv, "--start-tokens", "published") == 2
    err = capsys.readouterr().err
    assert "--start-tokens" in err and "different extraction" in err


def test_prepare_progress_names_each_teacher_and_base_flags_go_together(workspace, tmp_path, capsys):
    w = workspace
    _prepare(w, tmp_path / "out")
    err = capsys.readouterr().err
    assert "extract chars shard 1/1" in err and "extract bos_chars shard 1/1" in err
    common = ["prepare", "--data", w / "docs.jsonl", "--student-tokenizer", w / "student", "--teacher", w / "chars",
              "--block-size", BLOCK, "--no-cache"]
    assert _run(*common, "--base-teacher", "--out", tmp_path / "o2") == 2
    assert "--base-teacher needs --base-model" in capsys.readouterr().err
    assert _run(*common, "--base-model", w / "student", "--out", tmp_path / "o3") == 2
    assert "add --base-teacher" in capsys.readouterr().err
