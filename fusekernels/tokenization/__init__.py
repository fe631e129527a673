"""Tokenizer-aware alignment for any pair of Hugging Face tokenizers.

- :class:`TokenizerProfile`: kind, space marker, token strings and exact token bytes of a tokenizer;
- byte-span mode (default): :func:`byte_span_align` carries a teacher's top-k onto base positions
  whose byte span equals one blending token's, with an exact-bytes id map (:func:`build_byte_span_map`);
  :func:`byte_span_align_flat` aligns a whole batch (flat arrays + row offsets) in one native call;
- compatible mode: :func:`compat_align`, the published DTW + top-k transfer (hard / soft);
- :func:`check_same_text`: both id sequences must cover the same text (every aligner checks it);
- :func:`aligned_chunks`: the shortest text chunks both tokenizations encode with whole tokens and
  a teacher's likelihood of each (likelihood matching, per-token teacher choice);
- :func:`build_vocab_map`: the MinED vocabulary map (nearest base token by edit distance) (+ co-occurrence
  refinement, npz / JSON);
- :func:`align_dataset`: all of it over a ``datasets.Dataset`` of teacher outputs;
- :mod:`~fusekernels.tokenization.assets`: real tokenizers and text from optional asset packages.

Needs the native core (``fusekernels.align``) for compatible mode and MinED.
"""
from .batch import byte_span_align_flat
from .byte_span import (
                        ByteSpanMap,
                        build_byte_span_map,
                        byte_span_align,
                        byte_span_align_batch,
                        byte_span_positions,
                        check_same_text,
)
from .chunks import AlignedChunks, aligned_chunks
from .compat import compat_align, compat_align_batch, compat_tables, compat_teacher_mask
from .dataset import DEFAULT_COLUMNS, align_dataset
from .profile import TokenizerProfile
from .vocab_map import VocabMap, build_vocab_map

__all__ = [
    "TokenizerProfile",
    "ByteSpanMap",
    "build_byte_span_map",
    "byte_span_positions",
    "byte_span_align",
    "byte_span_align_batch",
    "byte_span_align_flat",
    "check_same_text",
    "AlignedChunks",
    "aligned_chunks",
    "compat_tables",
    "compat_align",
    "compat_align_batch",
    "compat_teacher_mask",
    "VocabMap",
    "build_vocab_map",
    "align_dataset",
    "DEFAULT_COLUMNS",
]
