"""MinED mapping: for every query string, the target string at the minimum edit distance.

This is the search behind FuseLLM's vocabulary mapping (blending -> base tokens): ties go to
the lowest target index, as in the published argmin over the base vocabulary in id order.
Space-marker replacement is the caller's job; strings are compared as given.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .. import _C
from ._validate import check_str_sequence, check_threads

__all__ = ["MinEDIndex", "MinEDResult", "mined_map"]


@dataclass(frozen=True)
class MinEDResult:
    """Nearest targets of ``nq`` queries.

    - ``ids``: int32 ``[nq]``, index of the nearest target (lowest index among ties);
    - ``distances``: int32 ``[nq]``, its Levenshtein distance;
    - ``tie_offsets``: int64 ``[nq + 1]`` or None; with ``tie_ids`` (int32) a CSR list of ALL
      targets at the minimum distance, ascending: query i's are
      ``tie_ids[tie_offsets[i]:tie_offsets[i + 1]]`` (never empty, first == ``ids[i]``).
    """

    ids: np.ndarray
    distances: np.ndarray
    tie_offsets: np.ndarray | None = None
    tie_ids: np.ndarray | None = None

    def ties(self, i: int) -> np.ndarray:
        """All target indices at the minimum distance for query ``i`` (needs ``return_ties``)."""
        if self.tie_offsets is None or self.tie_ids is None:
            raise ValueError("ties were not computed: call with return_ties=True")
        return self.tie_ids[self.tie_offsets[i] : self.tie_offsets[i + 1]]


def _result(raw: tuple) -> MinEDResult:
    ids, distances, offsets, tie_ids = raw
    return MinEDResult(ids=ids, distances=distances, tie_offsets=offsets, tie_ids=tie_ids)


class MinEDIndex:
    """Search index over a fixed list of targets, reusable for several query lists.

    Building it (hashing, deletion neighbourhoods up to two deletions, character posting lists)
    costs about as much as mapping a few thousand queries, so reuse it when one base vocabulary
    meets several blending vocabularies.
    """

    def __init__(self, targets: Sequence[str]) -> None:
        check_str_sequence(targets, "targets")
        if len(targets) == 0:
            raise ValueError("targets must not be empty")
        self._index = _C.MinedIndex(targets)

    def __len__(self) -> int:
        return len(self._index)

    def map(self, queries: Sequence[str], *, threads: int = 0, return_ties: bool = False) -> MinEDResult:
        """Nearest target of every query (see :func:`mined_map`)."""
        check_str_sequence(queries, "queries")
        return _result(self._index.map(queries, check_threads(threads), bool(return_ties)))


def mined_map(
    queries: Sequence[str], targets: Sequence[str], *, threads: int = 0, return_ties: bool = False
) -> MinEDResult:
    """For every query, the target at the smallest Levenshtein distance (code points).

    Ties go to the lowest target index; duplicate targets are allowed. With ``return_ties`` the
    result also lists all targets at the minimum distance. Work is spread over ``threads``
    threads (0 = all cores) with the GIL released. Raises ValueError for empty ``targets``,
    TypeError naming the argument and index of a non-str item.
    """
    check_str_sequence(queries, "queries")
    check_str_sequence(targets, "targets")
    if len(targets) == 0:
        raise ValueError("targets must not be empty")
    return _result(_C.mined_map(queries, targets, check_threads(threads), bool(return_ties)))
