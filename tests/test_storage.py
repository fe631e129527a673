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


# ---------------------------------------------------------------------------------- checksums
def test_checksums_name_the_damaged_file(tmp_path):
    folder = tmp_path / "saved"
    folder.mkdir()
    (folder / "data.arrow").write_bytes(bytes(range(256)) * 64)
    (folder / "state.json").write_text('{"a": 1}')
    storage.write_checksums(folder, tag="extraction-1")
    assert storage.verify_checksums(folder, tag="extraction-1")
    with pytest.raises(storage.DamagedFileError, match="another output"):
        storage.verify_checksums(folder, tag="extraction-2")
    blob = bytearray((folder / "data.arrow").read_bytes())
    blob[1000] ^= 0x01  # one bit, same size
    (folder / "data.arrow").write_bytes(bytes(blob))
    with pytest.raises(storage.DamagedFileError, match=r"data\.arrow .*checksum mismatch"):
        storage.verify_checksums(folder)
    (folder / "data.arrow").write_bytes(bytes(blob[:100]))
    with pytest.raises(storage.DamagedFileError, match=r"data\.arrow .*100 bytes where 16384 were written"):
        storage.verify_checksums(folder)
    (folder / "data.arrow").write_bytes(bytes(range(256)) * 64)
    storage.verify_checksums(folder)
    (folder / "state.json").unlink()
    with pytest.raises(storage.DamagedFileError, match=r"state\.json .*missing"):
        storage.verify_checksums(folder)
    other = tmp_path / "unrecorded"
    other.mkdir()
    assert storage.verify_checksums(other) is False
    with pytest.raises(storage.DamagedFileError, match="missing"):
        storage.verify_checksums(other, required=True)


# --------------------------------------------------------------------- temporaries and locks
_HOLD_TEMP = """
import sys, time
from fusekernels import storage
with storage.atomic_dir(sys.argv[1]) as tmp:
    (tmp / "part").write_text("half")
    print(tmp, flush=True)
    time.sleep(120)
"""


def _start(script, *args):
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", script, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    line = proc.stdout.readline().strip()
    assert line, proc.stderr.read()
    return proc, line


def test_next_run_removes_temps_of_killed_runs_not_of_live_ones(tmp_path):
    """Three processes writing the same output: one killed (SIGKILL, no cleanup), one alive, and a
    later run: the later run removes the killed run's temporary folder only, with one log line."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    final = tmp_path / "out"
    live, live_tmp = _start(_HOLD_TEMP, final)
    try:
        killed, killed_tmp = _start(_HOLD_TEMP, final)  # started later: leaves the live run's folder alone
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        assert Path(killed_tmp).is_dir() and Path(live_tmp).is_dir()
        later = subprocess.run([sys.executable, "-c", "import sys\nfrom fusekernels import storage\n"
                                "with storage.atomic_dir(sys.argv[1]) as tmp:\n    (tmp / 'part').write_text('whole')",
                                str(final)], capture_output=True, text=True, env={**os.environ,
                                                                                  "PYTHONPATH": os.getcwd()})
        assert later.returncode == 0, later.stderr
        assert not Path(killed_tmp).exists() and not Path(killed_tmp + ".lock").exists()
        assert Path(live_tmp).is_dir() and (Path(live_tmp) / "part").read_text() == "half"  # the live run's
        assert (final / "part").read_text() == "whole"
        lines = [line for line in later.stderr.splitlines() if "removed" in line]
        assert len(lines) == 1 and "1 temporary item" in lines[0] and str(tmp_path) in lines[0]
    finally:
        live.kill()
        live.wait()


_HOLD_MAP_TEMP = """
import sys, time
from pathlib import Path
from fusekernels import storage
with storage.registered_run(sys.argv[1]):
    (Path(sys.argv[1]) / "tmpLIVE0001").write_bytes(b"being written")  # what Dataset.map does
    print("ready", flush=True)
    time.sleep(120)
"""


def test_map_cache_temps_of_live_runs_are_kept(tmp_path):
    """``tmp*`` files (written by ``Dataset.map`` without a lock of their own) older than a later
    run are removed by it, unless a live run registered in the folder before they were made."""
    import subprocess
    import sys
    import time

    folder = tmp_path / "datasets"
    folder.mkdir()
    live, _ = _start(_HOLD_MAP_TEMP, folder)
    try:
        old = time.time() - 86400
        (folder / "tmpDEAD0001").write_bytes(b"left by a killed run")
        os.utime(folder / "tmpDEAD0001", (old, old))
        (folder / "split-0123.arrow").write_bytes(b"a finished cache file")
        os.utime(folder / "split-0123.arrow", (old, old))
        later = subprocess.run([sys.executable, "-c", "import sys\nfrom fusekernels import storage\n"
                                "with storage.registered_run(sys.argv[1]):\n    pass", str(folder)],
                               capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
        assert later.returncode == 0, later.stderr
        names = sorted(p.name for p in folder.iterdir() if not p.name.startswith(".run-"))
        assert names == ["split-0123.arrow", "tmpLIVE0001"]
        assert sum("removed 1 temporary file" in line for line in later.stderr.splitlines()) == 1
    finally:
        live.kill()
        live.wait()
    # the live run is gone now: its lock no longer protects anything, a later run removes its file
    subprocess.run([sys.executable, "-c", "import sys\nfrom fusekernels import storage\n"
                    "with storage.registered_run(sys.argv[1]):\n    pass", str(folder)], check=True,
                   env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert sorted(p.name for p in folder.iterdir()) == ["split-0123.arrow"]


def test_lock_errors_are_one_line(tmp_path):
    (tmp_path / "dir.lock").mkdir()
    with pytest.raises(storage.StoragePathError) as err:
        with storage.locked(tmp_path / "dir.lock"):
            pass
    assert str(tmp_path / "dir.lock") in str(err.value) and "is a folder" in str(err.value)
    assert "Errno" not in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "file").write_text("x")
    with pytest.raises(storage.StoragePathError, match="is a file, not a folder"):
        storage.ensure_folder(tmp_path / "file" / "sub", what="cache folder")
