"""Fingerprints, output-folder checks and atomic writes (fusekernels.storage)."""
import os

import pytest

from fusekernels import storage


def test_file_fingerprint_tracks_content(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"abc")
    first = storage.file_fingerprint(f)
    assert first == storage.file_fingerprint(f)
    f.write_bytes(b"abd")
    os.utime(f, ns=(1, 1))
    assert storage.file_fingerprint(f) != first
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "x").write_bytes(b"1")
    one = storage.file_fingerprint(folder)
    (folder / "y").write_bytes(b"2")
    assert storage.file_fingerprint(folder) != one


def test_texts_and_json_fingerprints():
    assert storage.texts_fingerprint(["a", "b"]) != storage.texts_fingerprint(["ab"])
    assert storage.json_fingerprint({"a": 1, "b": 2}) == storage.json_fingerprint({"b": 2, "a": 1})


def test_check_output_dir(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "f").write_text("x")
    with pytest.raises(ValueError, match="--out .* not empty"):
        storage.check_output_dir(inp)
    with pytest.raises(ValueError, match="overlaps the input"):
        storage.check_output_dir(inp / "sub", inputs=[inp])
    with pytest.raises(ValueError, match="not a folder"):
        storage.check_output_dir(inp / "f", inputs=[inp / "f"])
    assert storage.check_output_dir(tmp_path / "new" / "deeper") == (tmp_path / "new" / "deeper").resolve()
    assert not (tmp_path / "new").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_check_output_dir_read_only(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="--out"):
            storage.check_output_dir(ro / "out")
    finally:
        ro.chmod(0o700)


def test_atomic_dir_and_file(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with storage.atomic_dir(final) as tmp:
            (tmp / "part").write_text("half")
            raise RuntimeError("interrupted")
    assert not final.exists() and list(tmp_path.iterdir()) == []
    with storage.atomic_dir(final) as tmp:
        (tmp / "part").write_text("whole")
    assert (final / "part").read_text() == "whole"
    target = tmp_path / "f.json"
    storage.atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with storage.atomic_file(target, "w") as f:
            f.write("garbage")
            raise RuntimeError
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json", "out"]


def test_cache_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSEKERNELS_CACHE", str(tmp_path / "c"))
    assert storage.cache_dir("maps") == tmp_path / "c" / "maps"
    assert (tmp_path / "c" / "maps").is_dir()
