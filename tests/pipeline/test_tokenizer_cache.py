"""GGUF tokenizers loaded by path are converted once and reloaded from the user cache."""
import os

import pytest

from fusekernels.pipeline.io import load_tokenizer
from fusekernels.tokenization import tokenizer_cache

TEXT = "the theme of these three threads"


def write_tiny_gguf(path, extra_merge=False):
    """A GGUF file holding only a byte-level BPE vocabulary (no tensors): 3 specials, 256 bytes,
    'Ġt', 'he', 'Ġthe' (and 'Ġthe' + 'me' pieces when ``extra_merge``)."""
    gguf = pytest.importorskip("gguf")
    from tokenizers.pre_tokenizers import ByteLevel

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-5)
    merges = ["Ġ t", "h e", "Ġt he"] + (["m e", "Ġthe me"] if extra_merge else [])
    pieces = ["Ġt", "he", "Ġthe"] + (["me", "Ġtheme"] if extra_merge else [])
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + sorted(ByteLevel.alphabet()) + pieces
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * 3 + [1] * (len(tokens) - 3))
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(0)
    writer.add_add_bos_token(False)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture()
def conversions(monkeypatch, tmp_path):
    """Counts GGUF conversions (``AutoTokenizer.from_pretrained(..., gguf_file=...)``) in a fresh cache."""
    from transformers import AutoTokenizer

    monkeypatch.setenv("FUSEKERNELS_CACHE", str(tmp_path / "cache"))
    calls = []
    original = AutoTokenizer.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        if "gguf_file" in kwargs:
            calls.append(kwargs["gguf_file"])
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", classmethod(counting))
    return calls


def test_second_load_by_path_reuses_the_converted_tokenizer(tmp_path, conversions):
    from transformers import AutoTokenizer

    path = write_tiny_gguf(tmp_path / "teacher.gguf")
    first = load_tokenizer(path)
    assert conversions == ["teacher.gguf"]
    entries = [p.name for p in (tmp_path / "cache" / "tokenizers").iterdir() if p.is_dir()]
    assert len(entries) == 1 and entries[0].startswith("gguf-"), entries  # no temporary left behind
    second = load_tokenizer(str(path))
    assert conversions == ["teacher.gguf"]  # reloaded, not converted again
    direct = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="teacher.gguf")
    ids = direct(TEXT)["input_ids"]
    assert first(TEXT)["input_ids"] == second(TEXT)["input_ids"] == ids
    assert "Ġthe" in second.convert_ids_to_tokens(ids) and len(second) == len(direct) == 262
    assert second.eos_token == direct.eos_token == "<|endoftext|>"


def test_a_changed_file_is_converted_again(tmp_path, conversions):
    path = write_tiny_gguf(tmp_path / "teacher.gguf")
    before = load_tokenizer(path)
    write_tiny_gguf(path, extra_merge=True)  # same path, new content (size and mtime change)
    after = load_tokenizer(path)
    assert conversions == ["teacher.gguf", "teacher.gguf"]
    assert len(before) == 262 and len(after) == 264
    assert "Ġtheme" in after.convert_ids_to_tokens(after(TEXT)["input_ids"])
    load_tokenizer(path)
    assert len(conversions) == 2


def test_file_identity_sees_content_behind_an_unchanged_stat(tmp_path):
    path = tmp_path / "f.bin"
    data = bytearray(os.urandom(3 << 20))
    path.write_bytes(data)
    stat = path.stat()
    first = tokenizer_cache.file_identity(path)
    assert tokenizer_cache.file_identity(path) == first
    data[-1] ^= 0xFF  # last MiB edited, size and mtime put back
    path.write_bytes(data)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert tokenizer_cache.file_identity(path) != first
    data[-1] ^= 0xFF  # the original bytes again: the same identity
    path.write_bytes(data)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert tokenizer_cache.file_identity(path) == first
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # touched only
    assert tokenizer_cache.file_identity(path) != first


def test_a_damaged_cache_entry_is_rebuilt(tmp_path, conversions):
    path = write_tiny_gguf(tmp_path / "teacher.gguf")
    ids = load_tokenizer(path)(TEXT)["input_ids"]
    [entry] = [p for p in (tmp_path / "cache" / "tokenizers").iterdir() if p.is_dir()]
    (entry / "tokenizer.json").write_text("{ truncated")
    assert load_tokenizer(path)(TEXT)["input_ids"] == ids
    assert len(conversions) == 2
    load_tokenizer(path)
    assert len(conversions) == 2


def test_loading_leaves_the_environment_unchanged(tmp_path, monkeypatch):
    from .helpers import asset

    monkeypatch.setenv("FUSEKERNELS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    before = dict(os.environ)
    load_tokenizer(write_tiny_gguf(tmp_path / "teacher.gguf"))
    assert dict(os.environ) == before
    assets = pytest.importorskip("fusekernels.tokenization.assets")
    assets.load_tokenizer.cache_clear()  # build it in this process, through the asset route
    asset("load_tokenizer", "gpt2")
    assert dict(os.environ) == before


def test_concurrent_first_loads_convert_once(tmp_path, conversions):
    """Loads racing for a missing entry wait on its lock: one converts, the others reload."""
    from concurrent.futures import ThreadPoolExecutor

    path = write_tiny_gguf(tmp_path / "teacher.gguf")
    with ThreadPoolExecutor(3) as pool:
        loaded = list(pool.map(lambda _: load_tokenizer(path), range(3)))
    assert conversions == ["teacher.gguf"]
    assert len({tuple(tok(TEXT)["input_ids"]) for tok in loaded}) == 1
    root = tmp_path / "cache" / "tokenizers"
    assert [p.name for p in root.iterdir() if p.is_dir()] == [p.name for p in root.glob("gguf-*") if p.is_dir()]
