"""Near-identical long strings are fast (common prefix / suffix trimmed, banded search) and long
native calls stop on Ctrl-C (SIGINT -> KeyboardInterrupt) although they run without the GIL."""
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fusekernels.align import dtw_align, levenshtein, mined_map

ROOT = Path(__file__).resolve().parents[2]


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def test_near_identical_long_strings_are_fast():
    n = 10**6  # before: over 2 minutes (MinED) and 112 s (DTW) for one pair
    res, took = _timed(lambda: mined_map(["a" * n], ["a" * (n - 1) + "b", "b" * 10]))
    assert res.ids.tolist() == [0] and res.distances.tolist() == [1] and took < 10
    al, took = _timed(lambda: dtw_align(["x" + "a" * n + "y"], ["x" + "a" * (n - 1) + "by"]))
    assert al.groups() == [[0]] and took < 10
    # no common prefix or suffix: the banded search still finds a small distance quickly
    rng = random.Random(0)
    a = "".join(rng.choice("ab") for _ in range(200_000))
    b = "c" + a[1:100_000] + "dd" + a[100_001:-1] + "e"
    d, took = _timed(lambda: levenshtein(a, b))
    assert d == 4 and took < 10
    res, took = _timed(lambda: mined_map([a], [b, a[:1000]]))
    assert res.distances.tolist() == [4] and took < 10


@pytest.mark.parametrize("call", ["levenshtein", "levenshtein_batch", "mined_map", "dtw_align", "dtw_align_batch"])
def test_long_native_call_stops_on_sigint(call):
    n = 600_000  # far random strings: the full bit-parallel pass takes many seconds
    # A shell that starts a job in the background ignores SIGINT for it, and Python then keeps
    # SIGINT ignored: restore the handler an interactive user has.
    script = f"""
import random, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
from fusekernels.align import dtw_align, dtw_align_batch, levenshtein, levenshtein_batch, mined_map
rng = random.Random(0)
a = "".join(rng.choice("abcd") for _ in range({n}))
b = "".join(rng.choice("abcd") for _ in range({n}))
calls = {{
    "levenshtein": lambda: levenshtein(a, b),
    "levenshtein_batch": lambda: levenshtein_batch([a, a], [b, b], threads=2),
    "mined_map": lambda: mined_map([a], [b]),
    "dtw_align": lambda: dtw_align(["x", a], [b, "x"]),
    "dtw_align_batch": lambda: dtw_align_batch([["x", a]] * 2, [[b, "x"]] * 2, threads=2),
}}
print("started", flush=True)
calls["{call}"]()
print("finished", flush=True)
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=ROOT)
    try:
        assert proc.stdout.readline().strip() == "started"
        time.sleep(1.0)  # inside the native call by now
        assert proc.poll() is None, "the call finished before the signal: make it longer"
        proc.send_signal(signal.SIGINT)
        sent = time.perf_counter()
        out, err = proc.communicate(timeout=20)
        stopped = time.perf_counter() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "KeyboardInterrupt" in err and "finished" not in out, err[-2000:]
    assert stopped < 3.0, f"took {stopped:.1f} s to stop"
