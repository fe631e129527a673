"""Native edit-distance alignment: Levenshtein, MinED vocabulary mapping, DTW, top-k transfer.

- :func:`levenshtein`, :func:`levenshtein_batch`: edit distance over Unicode code points;
- :func:`mined_map`, :class:`MinEDIndex`, :class:`MinEDResult`: nearest target string of every
  query (FuseLLM's vocabulary mapping, ties to the lowest target index);
- :func:`dtw_align`, :func:`dtw_align_batch`, :class:`Alignment`: token alignment of one
  sequence pair by dynamic time warping over edit distances;
- :func:`build_transfer_tables`, :func:`transfer_topk`, :func:`transfer_topk_batch`: moving a
  blending model's top-k distribution onto the base tokens.
"""
from .dtw import Alignment, dtw_align, dtw_align_batch
from .levenshtein import levenshtein, levenshtein_batch
from .mined import MinEDIndex, MinEDResult, mined_map
from .topk_transfer import TopKResult, TransferTables, build_transfer_tables, transfer_topk, transfer_topk_batch

__all__ = [
    "Alignment",
    "MinEDIndex",
    "MinEDResult",
    "TopKResult",
    "TransferTables",
    "build_transfer_tables",
    "dtw_align",
    "dtw_align_batch",
    "levenshtein",
    "levenshtein_batch",
    "mined_map",
    "transfer_topk",
    "transfer_topk_batch",
]
