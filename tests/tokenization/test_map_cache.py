"""Vocabulary and byte-span maps are stored in the user cache folder and reused by later processes."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from fusekernels.tokenization import byte_span, vocab_map


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSEKERNELS_CACHE", str(tmp_path))
    monkeypatch.setattr(byte_span, "_MAP_CACHE", {})
    monkeypatch.setattr(vocab_map, "_CACHE", {})
    return tmp_path / "maps"


def _no_mined(*args, **kwargs):
    raise AssertionError("the MinED search ran although the map is cached on disk")


def test_byte_span_map_reused_from_disk(cache, profile, monkeypatch):
    base, blend = profile("mistral-v1"), profile("gpt2")
    built = byte_span.build_byte_span_map(base, blend)
    files = sorted(cache.glob("byte-span-mined-*.npz"))
    assert len(files) == 1 and not list(cache.glob(".*tmp*"))  # written atomically, no leftovers
    monkeypatch.setattr(byte_span, "_MAP_CACHE", {})
    import fusekernels.align.mined as mined

    monkeypatch.setattr(mined, "mined_map", _no_mined)
    loaded = byte_span.build_byte_span_map(base, blend)
    assert loaded is not built
    assert np.array_equal(loaded.ids, built.ids) and np.array_equal(loaded.exact, built.exact)
    # another pair or fallback is another file; a damaged file is rebuilt and replaced
    files[0].write_bytes(b"not a zip file")
    monkeypatch.undo()
    monkeypatch.setenv("FUSEKERNELS_CACHE", str(cache.parent))
    monkeypatch.setattr(byte_span, "_MAP_CACHE", {})
    again = byte_span.build_byte_span_map(base, blend)
    assert np.array_equal(again.ids, built.ids)
    assert np.load(files[0])["ids"].shape == built.ids.shape
    byte_span.build_byte_span_map(base, blend, fallback="prefix")
    assert len(list(cache.glob("byte-span-*.npz"))) == 2


def test_vocab_map_reused_from_disk(cache, profile, monkeypatch):
    base, blend = profile("mistral-v1"), profile("gpt2")
    built = vocab_map.build_vocab_map(base, blend)
    assert len(list(cache.glob("vocab-map-*.npz"))) == 1
    monkeypatch.setattr(vocab_map, "_CACHE", {})
    import fusekernels.align.mined as mined

    monkeypatch.setattr(mined, "mined_map", _no_mined)
    loaded = vocab_map.build_vocab_map(base, blend)
    assert np.array_equal(loaded.base_ids, built.base_ids) and np.array_equal(loaded.distances, built.distances)
    assert loaded.to_dict() == built.to_dict()


def test_new_process_reuses_the_file(cache):
    code = ("import time; from fusekernels.tokenization import assets, TokenizerProfile, build_byte_span_map;"
            "b, a = (TokenizerProfile.from_tokenizer(assets.load_tokenizer(n)) for n in ('mistral-v1', 'smollm2'));"
            "t = time.perf_counter(); build_byte_span_map(b, a); print(time.perf_counter() - t)")
    try:
        runs = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                     env={**__import__("os").environ}).stdout.split()[-1]) for _ in range(2)]
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"tokenizers unavailable: {exc.stderr[-300:]}")
    assert len(list(cache.glob("byte-span-*.npz"))) == 1
    assert runs[1] < runs[0] / 3  # MinED over ~27k SmolLM2 tokens vs one small file read
