"""Output-folder checks and atomic writes (fusekernels.storage)."""
import os

import pytest

from fusekernels import storage


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
