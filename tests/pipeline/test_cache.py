"""Teacher-output disk cache: reuse, invalidation on every key field, interrupted writes."""
import json

import datasets
import numpy as np
import pytest

from fusekernels.pipeline import cache as cache_mod
from fusekernels.pipeline.cache import cached_extract, extraction_key
from fusekernels.pipeline.extract import extract_teacher_topk

from .helpers import log_lines, make_char_tokenizer, make_tiny_llama, make_word_tokenizer

TEXTS = ["In the beginning God created the heaven and the earth.", "And the earth was without form, and void.",
         "And God said, Let there be light: and there was light.", "short"]


@pytest.fixture
def texts():
    return datasets.Dataset.from_dict({"text": TEXTS})


def _run(model, tok, data, root, lines=None, **kw):
    opts = dict(k=4, max_length=32, progress=False, cache=root)
    opts.update(kw)
    with log_lines(lines if lines is not None else []):
        return cached_extract(model, tok, data, **opts)


def _same(a, b):
    for col in ("input_ids", "topk_ids", "topk_logits", "metric_ce"):
        assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a[col], b[col])), col


def test_second_run_reuses_and_says_so(tmp_path, texts):
    tok = make_char_tokenizer()
    model = make_tiny_llama(len(tok), seed=1)
    lines = []
    first, info = _run(model, tok, texts, tmp_path, lines)
    assert info.status == "computed" and not info.reused and (info.path / cache_mod.KEY_NAME).is_file()
    reference = extract_teacher_topk(model, tok, texts, k=4, max_length=32, progress=False)
    _same(first, reference)
    second, info2 = _run(model, tok, texts, tmp_path, lines)
    assert info2.reused and info2.path == info.path
    _same(second, reference)
    assert "reused from the cache" in lines[-1] and "written to the cache" in lines[0]
    assert second["text"] == TEXTS

def test_path_model_is_not_loaded_on_a_hit(tmp_path, texts, monkeypatch):
    tok = make_char_tokenizer()
    make_tiny_llama(len(tok), seed=1).save_pretrained(tmp_path / "m")
    _, by_path = _run(str(tmp_path / "m"), tok, texts, tmp_path / "c")
    assert by_path.status == "computed"

    def no_load(*a, **k):
        raise AssertionError("model loaded on a cache hit")
    monkeypatch.setattr(cache_mod, "_load", no_load)
    assert _run(str(tmp_path / "m"), tok, texts, tmp_path / "c")[1].reused


@pytest.mark.parametrize("change", ["weights", "tokenizer", "texts", "order", "k", "max_length", "logits_dtype",
                                    "per_token_ce", "model_file", "load_kwargs"])
def test_every_key_field_invalidates(tmp_path, texts, change):
    tok = make_char_tokenizer()
    model = make_tiny_llama(len(tok), seed=1)
    model.save_pretrained(tmp_path / "m")
    use_file = change in ("model_file", "load_kwargs")
    base_model = str(tmp_path / "m") if use_file else model
    _, first = _run(base_model, tok, texts, tmp_path / "c")
    args = dict(model=base_model, tok=tok, data=texts, kw={})
    if change == "weights":
        args["model"] = make_tiny_llama(len(tok), seed=2)
    elif change == "tokenizer":
        args["tok"] = make_word_tokenizer("In the beginning God".split() + [c for c in "abcdefghijklmnop"])
        args["model"] = make_tiny_llama(len(args["tok"]), seed=1)
        args["model"].load_state_dict({k: v for k, v in model.state_dict().items() if "embed" not in k
                                       and "lm_head" not in k}, strict=False)
        assert extraction_key(model, tok, TEXTS, k=4, max_length=32)["tokenizer"] != \
            extraction_key(model, args["tok"], TEXTS, k=4, max_length=32)["tokenizer"]
    elif change == "texts":
        args["data"] = datasets.Dataset.from_dict({"text": TEXTS[:-1] + ["shorter"]})
    elif change == "order":
        args["data"] = datasets.Dataset.from_dict({"text": TEXTS[::-1]})
    elif change in ("k", "max_length", "logits_dtype", "per_token_ce"):
        args["kw"] = {change: {"k": 3, "max_length": 16, "logits_dtype": "float32", "per_token_ce": True}[change]}
    elif change == "model_file":
        make_tiny_llama(len(tok), seed=5).save_pretrained(tmp_path / "m")
    elif change == "load_kwargs":
        args["kw"] = {"load_kwargs": {"dtype": "float64"}}
    _, second = _run(args["model"], args["tok"], args["data"], tmp_path / "c", **args["kw"])
    assert second.status == "computed" and second.key != first.key
    _, third = _run(args["model"], args["tok"], args["data"], tmp_path / "c", **args["kw"])
    assert third.reused and third.key == second.key


def test_unused_tokenizer_flags_do_not_invalidate():
    tok, other = make_char_tokenizer(), make_char_tokenizer()
    model = make_tiny_llama(len(tok), seed=1)
    other.padding_side, other.chat_template = "left", "{{ messages }}"
    assert extraction_key(model, tok, TEXTS, k=4, max_length=32) == extraction_key(model, other, TEXTS, k=4,
                                                                                  max_length=32)
    other.add_tokens(["<new>"])  # a different vocabulary does
    assert extraction_key(model, tok, TEXTS, k=4, max_length=32) != extraction_key(model, other, TEXTS, k=4,
                                                                                  max_length=32)


def test_batch_size_does_not_invalidate(tmp_path, texts):
    tok = make_char_tokenizer()
    model = make_tiny_llama(len(tok), seed=1)
    _run(model, tok, texts, tmp_path, batch_size=2)
    assert _run(model, tok, texts, tmp_path, batch_size=3)[1].reused


def test_interrupted_write_resumes_and_leaves_no_final_entry(tmp_path, monkeypatch):
    tok = make_char_tokenizer()
    model = make_tiny_llama(len(tok), seed=1)
    many = datasets.Dataset.from_dict({"text": [f"verse {i}: and it was so." for i in range(7)]})
    monkeypatch.setattr(cache_mod, "SHARD_SIZE", 3)
    from fusekernels.pipeline import extract as extract_mod
    real_call, calls = extract_mod._ShardRunner.__call__, []

    def interrupted(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies after its first shard
        return real_call(self, *a, **k)
    monkeypatch.setattr(extract_mod._ShardRunner, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run(model, tok, many, tmp_path)
    finals = [p for p in tmp_path.iterdir() if p.is_dir() and not p.name.endswith(".partial")]
    assert finals == []  # nothing under a final name
    partial = next(p for p in tmp_path.iterdir() if p.name.endswith(".partial"))
    assert (partial / "shard-00000").is_dir() and not (partial / "shard-00001").exists()

    lines = []
    rows, info = _run(model, tok, many, tmp_path, lines)
    assert info.status == "resumed" and "resuming an interrupted cache write" in lines[0]
    assert len(calls) == 4  # shards 2 and 3 only: shard 1 was kept
    assert not partial.exists()
    _same(rows, extract_teacher_topk(model, tok, many, k=4, max_length=32, progress=False))
    assert _run(model, tok, many, tmp_path)[1].reused


def test_damaged_entry_is_recomputed(tmp_path, texts):
    tok = make_char_tokenizer()
    model = make_tiny_llama(len(tok), seed=1)
    _, info = _run(model, tok, texts, tmp_path)
    key_file = info.path / cache_mod.KEY_NAME
    key = json.loads(key_file.read_text())
    key_file.write_text(json.dumps({**key, "k": 99}))  # a stale or hand-edited entry
    lines = []
    rows, again = _run(model, tok, texts, tmp_path, lines)
    assert again.status == "computed" and "cannot be reused" in lines[0] and "key file differs" in lines[0]
    import shutil
    shutil.rmtree(info.path / "shard-00000")  # a damaged entry: shards missing
    assert _run(model, tok, texts, tmp_path)[1].status == "computed"
    _same(rows, extract_teacher_topk(model, tok, texts, k=4, max_length=32, progress=False))


def test_disabled_and_bad_arguments(tmp_path, texts):
    tok = make_char_tokenizer()
    model = make_tiny_llama(len(tok), seed=1)
    rows, info = _run(model, tok, texts, False)
    assert info.status == "disabled" and info.path is None and len(rows) == len(TEXTS)
    with pytest.raises(ValueError, match="max_length"):
        _run(model, tok, texts, tmp_path, max_length=None)
    with pytest.raises(ValueError, match="column 'body'"):
        _run(model, tok, texts, tmp_path, text_column="body")


def _replace_once(path, old: bytes, new: bytes):
    data = path.read_bytes()
    assert data.count(old) == 1, "the pattern must locate one place in the Arrow file"
    path.write_bytes(data.replace(old, new))


@pytest.mark.parametrize("column", ["topk_ids", "topk_logits"])
def test_flipped_byte_with_values_in_range_is_recomputed(tmp_path, texts, column):
    """One changed byte inside an entry's ids or logits, the value staying valid (an id inside the
    vocabulary, a finite logit): before content checksums the entry was reused as is."""
    tok = make_char_tokenizer()
    model = make_tiny_llama(len(tok), seed=1)
    clean, info = _run(model, tok, texts, tmp_path)
    arrow = next((info.path / "shard-00000").glob("*.arrow"))
    row = clean.with_format("numpy")[0]
    if column == "topk_ids":
        ids = np.asarray(row["topk_ids"], dtype=np.int32)[0]  # position 0: k ids, one int32 each
        changed = ids.copy()
        changed[0] = ids[0] ^ 1  # another id, still inside the vocabulary
        assert 0 <= changed[0] < len(tok)
        _replace_once(arrow, ids.tobytes(), changed.tobytes())
    else:
        logits = np.asarray(row["topk_logits"], dtype=np.float16)[:2].reshape(-1)
        changed = logits.copy()
        changed.view(np.uint16)[0] ^= 1  # lowest mantissa bit: still a finite logit
        assert np.isfinite(changed).all()
        _replace_once(arrow, logits.tobytes(), changed.tobytes())
    lines = []
    again, info2 = _run(model, tok, texts, tmp_path, lines)
    assert info2.status == "computed" and "checksum mismatch" in lines[0] and arrow.name in lines[0]
    # (``clean`` maps the file that was changed in place: compare with a fresh extraction)
    _same(again, extract_teacher_topk(model, tok, texts, k=4, max_length=32, progress=False))
    assert _run(model, tok, texts, tmp_path)[1].reused


def test_shard_copied_from_another_entry_is_recomputed(tmp_path, texts):
    """A shard folder (with its checksum record) copied over from another teacher's entry."""
    import shutil

    tok = make_char_tokenizer()
    model, other = make_tiny_llama(len(tok), seed=1), make_tiny_llama(len(tok), seed=2)
    clean, info = _run(model, tok, texts, tmp_path)
    _, other_info = _run(other, tok, texts, tmp_path)
    shutil.rmtree(info.path / "shard-00000")
    shutil.copytree(other_info.path / "shard-00000", info.path / "shard-00000")
    lines = []
    again, info2 = _run(model, tok, texts, tmp_path, lines)
    assert info2.status == "computed" and "another output" in lines[0]
    _same(again, clean)
    _same(again, extract_teacher_topk(model, tok, texts, k=4, max_length=32, progress=False))


def test_lock_path_that_is_a_folder_is_one_line(tmp_path, texts):
    from fusekernels.storage import StoragePathError

    tok = make_char_tokenizer()
    model = make_tiny_llama(len(tok), seed=1)
    _, info = _run(model, tok, texts, tmp_path)
    lock = tmp_path / f"{info.key}.lock"
    lock.unlink()
    lock.mkdir()
    with pytest.raises(StoragePathError) as err:
        _run(model, tok, texts, tmp_path)
    message = str(err.value)
    assert "\n" not in message and str(lock) in message and "is a folder" in message and "remove it" in message
    assert "Errno" not in message


def test_cache_folder_that_is_a_file_is_one_line(tmp_path, texts, monkeypatch):
    from fusekernels.storage import StoragePathError, cache_dir

    tok = make_char_tokenizer()
    model = make_tiny_llama(len(tok), seed=1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoragePathError, match="is a file, not a folder") as err:
        _run(model, tok, texts, tmp_path / "file" / "cache")
    assert "\n" not in str(err.value) and "Errno" not in str(err.value)
    monkeypatch.setenv("FUSEKERNELS_CACHE", str(tmp_path / "file"))
    with pytest.raises(StoragePathError, match=r"\$FUSEKERNELS_CACHE"):
        cache_dir("teacher-outputs")
