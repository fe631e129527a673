"""Content fingerprints (fusekernels.fingerprint): equal content, equal key; any change, a new one."""
import os
from types import SimpleNamespace

import numpy as np

from fusekernels import fingerprint


def test_file_fingerprint_tracks_content(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"abc")
    first = fingerprint.file_fingerprint(f)
    assert first == fingerprint.file_fingerprint(f)
    f.write_bytes(b"abd")
    os.utime(f, ns=(1, 1))
    assert fingerprint.file_fingerprint(f) != first
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "x").write_bytes(b"1")
    one = fingerprint.file_fingerprint(folder)
    (folder / "y").write_bytes(b"2")
    assert fingerprint.file_fingerprint(folder) != one


def test_texts_and_json_fingerprints():
    assert fingerprint.texts_fingerprint(["a", "b"]) != fingerprint.texts_fingerprint(["ab"])
    assert fingerprint.json_fingerprint({"a": 1, "b": 2}) == fingerprint.json_fingerprint({"b": 2, "a": 1})


def _profile(tokens, **extra):
    data = [t.encode() for t in tokens]
    fields = dict(kind="bpe", marker="", dummy_prefix="never", special_ids={}, vocab_size=len(tokens), tokens=tokens,
                  token_bytes=data, byte_lengths=np.array([len(d) for d in data]),
                  is_special=np.zeros(len(tokens), bool), is_byte_fallback=np.zeros(len(tokens), bool))
    fields.update(extra)
    return SimpleNamespace(**fields)


def test_profile_fingerprints_follow_the_vocabulary_not_the_object():
    a, same, other = _profile(["a", "b"]), _profile(["a", "b"]), _profile(["a", "c"])
    assert fingerprint.profile_fingerprint(a) == fingerprint.profile_fingerprint(same)
    assert fingerprint.profile_fingerprint(a) != fingerprint.profile_fingerprint(other)
    assert fingerprint.profile_fingerprint(a) != fingerprint.profile_fingerprint(_profile(["a", "b"], marker="_"))
    assert fingerprint.token_bytes_fingerprint(a) == fingerprint.token_bytes_fingerprint(same)
    special = _profile(["a", "b"], is_special=np.array([False, True]))
    assert fingerprint.token_bytes_fingerprint(a) != fingerprint.token_bytes_fingerprint(special)
    assert fingerprint.tokens_fingerprint(["ab", "c"]) != fingerprint.tokens_fingerprint(["a", "bc"])


def test_vocab_map_and_map_fingerprints():
    assert fingerprint.vocab_map_fingerprint(None) == "none"
    assert fingerprint.vocab_map_fingerprint({1: 2, 0: 3}) == fingerprint.vocab_map_fingerprint({0: 3, 1: 2})
    vmap = SimpleNamespace(base_ids=np.array([0, 2, 1]), method="default")
    assert fingerprint.vocab_map_fingerprint(vmap) != fingerprint.vocab_map_fingerprint(
        SimpleNamespace(base_ids=np.array([0, 1, 2]), method="default"))
    dataset = SimpleNamespace(_fingerprint="abc")
    key = fingerprint.map_fingerprint(dataset, ("byte_span", 4))
    assert len(key) == 16 and key == fingerprint.map_fingerprint(SimpleNamespace(_fingerprint="abc"), ("byte_span", 4))
    assert key != fingerprint.map_fingerprint(dataset, ("byte_span", 5))
    assert key != fingerprint.map_fingerprint(SimpleNamespace(_fingerprint="abd"), ("byte_span", 4))
