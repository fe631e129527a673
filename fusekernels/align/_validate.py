"""Argument checks shared by the native alignment wrappers (clear errors before entering C++)."""
from __future__ import annotations

import operator
from collections.abc import Sequence

import numpy as np


def _as_int(value: object, name: str, expected: str) -> int:
    """An int from any integer type (int, numpy integers); bool and floats are rejected."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__}") from None


def check_max_dist(max_dist: int | None) -> int | None:
    """None, or max_dist as an int >= 0 (clamped to 2**30, which no distance comes near)."""
    if max_dist is None:
        return None
    value = _as_int(max_dist, "max_dist", "an int or None")
    if value < 0:
        raise ValueError(f"max_dist must be >= 0 or None, got {value}")
    return min(value, 1 << 30)


def check_threads(threads: int) -> int:
    """The worker count as an int >= 0, where 0 means all cores (capped at 256 threads)."""
    value = _as_int(threads, "threads", "an int")
    if value < 0:
        raise ValueError(f"threads must be >= 0 (0 = all cores), got {value}")
    return min(value, 256)


def check_str_sequence(value: Sequence[str], name: str) -> Sequence[str]:
    """Checks that value is a sequence (not a single str) or a 1-D numpy array; the item types
    (str, including numpy.str_) are checked natively, naming the index of a bad item."""
    if isinstance(value, np.ndarray):
        if value.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got an array of shape {value.shape}")
        return value
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a sequence of str, got {type(value).__name__}")
    return value
