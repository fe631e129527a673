"""Defaults of the options that shape a fusion dataset, defined once.

The Python API (:func:`~fusekernels.pipeline.api.build_fusion_dataset`,
:func:`~fusekernels.pipeline.align_step.align_teachers`) and both command-line routes
(``fusekernels prepare`` and ``split`` -> ``extract`` -> ``align`` -> ``pack``, whose options come
from :mod:`fusekernels.cli.data_options`) read these, so that the same options give the same
packed dataset whichever route builds it.
"""
from __future__ import annotations

K = 10  # top-k entries kept per position
BATCH_SIZE = 8  # texts per teacher forward pass (part of the output: padding changes the logits' low bits)
SHARD_SIZE = 256  # texts per extraction shard: texts are grouped by length into batches within a shard
SPLIT_MARGIN = 48  # tokens kept free below the block size when long documents are split (published value)
METHOD = "byte_span"  # token alignment mode
FALLBACK = "absent"  # positions a teacher cannot serve: left out (published: one-hot / base distribution)
BASE_TEACHER = False  # the base (student) model's own top-k as teacher 0 (FuseLLM's continual training)
START_TOKENS = "model"  # each model sees the ids its tokenizer adds before a text (e.g. <bos>)
PER_TOKEN_CE = True  # per-token CE at extraction, hence the aligned-chunk columns
LOGITS_DTYPE = "float16"  # storage dtype of the teacher logits
