"""Levenshtein (unit-cost edit) distance over Unicode code points, computed natively.

Bit-parallel (Myers / Hyyrö) with common prefix/suffix trimming; ``max_dist`` caps the result
at ``max_dist + 1`` and lets the computation stop early.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .. import _C
from ._validate import check_max_dist, check_str_sequence, check_threads

__all__ = ["levenshtein", "levenshtein_batch"]


def levenshtein(a: str, b: str, *, max_dist: int | None = None) -> int:
    """Edit distance between ``a`` and ``b`` counted in code points.

    With ``max_dist`` the result is ``min(distance, max_dist + 1)``.
    Raises TypeError when ``a`` or ``b`` is not a str, ValueError for a negative ``max_dist``.
    """
    if not isinstance(a, str):
        raise TypeError(f"a must be str, got {type(a).__name__}")
    if not isinstance(b, str):
        raise TypeError(f"b must be str, got {type(b).__name__}")
    return _C.levenshtein(a, b, check_max_dist(max_dist))


def levenshtein_batch(
    a: Sequence[str], b: Sequence[str], *, max_dist: int | None = None, threads: int = 0
) -> np.ndarray:
    """Distances of the pairs ``(a[i], b[i])``: int32 array of shape ``[len(a)]``.

    The strings are converted under the GIL, then the pairs are computed with the GIL released
    on ``threads`` worker threads (0 = all cores). ``max_dist`` caps each result as in
    :func:`levenshtein`. Raises TypeError naming the argument and index of a non-str item and
    ValueError when the lengths differ.
    """
    check_str_sequence(a, "a")
    check_str_sequence(b, "b")
    if len(a) != len(b):
        raise ValueError(f"a and b must have the same length, got {len(a)} and {len(b)}")
    return _C.levenshtein_batch(a, b, check_max_dist(max_dist), check_threads(threads))
