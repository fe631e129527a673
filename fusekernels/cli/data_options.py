"""The options that shape a fusion dataset, shared by ``prepare`` and the step-by-step route.

``fusekernels prepare`` and ``split`` -> ``extract`` -> ``align`` -> ``pack`` build the same packed
dataset from the same options: each such option is declared here once (name, default from
:mod:`fusekernels.pipeline.defaults`, help) and every command that takes it uses
:func:`data_option` in its arguments dataclass.
"""
from __future__ import annotations

import dataclasses

from ..pipeline import defaults


def _alignment_modes():
    from ..tokenization.registry import ALIGNMENT_MODES

    return ALIGNMENT_MODES


def _fallbacks():
    from ..pipeline.align_step import FALLBACKS

    return FALLBACKS


def _logits_dtypes():
    from ..tokenization.dataset import LOGITS_DTYPES

    return LOGITS_DTYPES


def _start_tokens():
    from ..pipeline.extract import START_TOKENS

    return START_TOKENS


OPTIONS = {
    "k": (defaults.K, {"min": 1, "help": "top-k entries kept per position"}),
    "batch_size": (defaults.BATCH_SIZE, {"min": 1, "help": "texts per teacher forward pass"}),
    "margin": (defaults.SPLIT_MARGIN, {"min": 0, "help": "tokens kept free below the block size: texts longer than "
                                                         "block size - margin tokens in some tokenizer are cut"}),
    "method": (defaults.METHOD, {
        "choices": _alignment_modes,
        "help": "token alignment: byte-span alignment, the published DTW alignment (compat_hard / compat_soft: "
                "hard / soft vocabulary match), or a registered alignment mode"}),
    "fallback": (defaults.FALLBACK, {
        "choices": _fallbacks,
        "help": "positions a teacher cannot serve: absent: the teacher is left out there; published: unaligned "
                "positions get the one-hot on the current token and empty aligned lists the base model's "
                "distribution (needs --base-teacher with compat_hard)"}),
    "base_teacher": (defaults.BASE_TEACHER, {
        "help": "the base (student) model's own top-k is teacher 0, as in FuseLLM's continual training",
        "negate_help": "the base model's own top-k is not a teacher"}),
    "start_tokens": (defaults.START_TOKENS, {
        "choices": _start_tokens,
        "help": "model: each model sees the ids its tokenizer adds before a text (e.g. Gemma's <bos>), outputs "
                "kept on the text's own tokens; published: the text alone, as the published recipe"}),
    "per_token_ce": (defaults.PER_TOKEN_CE, {
        "help": "store each teacher's per-token CE, from which align adds the aligned-chunk columns "
                "(teacher_chunk_span / teacher_chunk_logprob for loss_type alm, teacher_token_ce for metric_level "
                "token)",
        "negate_help": "leave out the per-token CE and the aligned-chunk columns (smaller data)"}),
    "logits_dtype": (defaults.LOGITS_DTYPE, {
        "choices": _logits_dtypes,
        "help": "storage dtype of the teacher logits (float32 for teachers beyond the float16 range)"}),
}


def data_option(name: str, **metadata) -> dataclasses.Field:
    """The dataclass field of the shared option ``name`` (``metadata`` adds to or overrides its
    help, choices, ...)."""
    default, meta = OPTIONS[name]
    return dataclasses.field(default=default, metadata={**meta, **metadata})
