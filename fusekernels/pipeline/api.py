"""One call from texts to a FuseLLM training dataset: split -> extract -> align -> pack.

:func:`build_fusion_dataset` chains the pipeline steps of this package for a student (target)
tokenizer and several teachers with their own tokenizers::

    texts ──split_long_texts──► texts that fit every tokenizer
          ──cached_extract──► each teacher's top-k on its own tokens (disk cache, see cache.py)
          ──align_teachers──► every teacher's top-k on the student's tokens, stacked
          ──pack_sequences──► blocks of ``block_size`` tokens for FusionTrainer

The result is a ``datasets.Dataset`` with the columns
:class:`fusekernels.integration.FusionDataCollator` takes (``input_ids`` [B] int32,
``teacher_ids`` [B, T, k] int32, ``teacher_logits`` [B, T, k] float16, ``teacher_ce`` [T]
float32), teachers in the order given (the base model first when ``base_model`` is given, as in
FuseLLM where the target's own distribution is one of the fused ones). With
``return_report=True`` a :class:`FusionDataReport` comes with it: per-teacher alignment coverage,
cache use and per-stage throughput.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

from . import defaults


@dataclass
class FusionDataReport:
    """What :func:`build_fusion_dataset` did.

    ``teachers``: per teacher (base model first when given) its name, ``coverage`` (fraction of
    student positions that got its real distribution), ``cache`` (``reused`` / ``computed`` /
    ``resumed`` / ``disabled``), extraction ``tokens`` / ``seconds`` / ``tokens_per_s`` (0 s when
    reused) and ``start_tokens`` (the ids put before each text). ``stages``: seconds and tokens/s
    of ``split``, ``align`` and ``pack``. ``chat``: whether the input was conversations; then
    ``label_tokens`` counts the packed assistant tokens that carry a label (all other positions
    are -100).
    """
    texts: int = 0
    student_positions: int = 0
    blocks: int = 0
    block_size: int = 0
    teachers: list = field(default_factory=list)
    stages: dict = field(default_factory=dict)
    chat: bool = False
    label_tokens: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def build_fusion_dataset(texts, student_tokenizer, teachers: Sequence, *, block_size: int = 2048, k: int = defaults.K,
                         split_margin: int = defaults.SPLIT_MARGIN, base_model=None, method: str = defaults.METHOD,
                         fallback: str = defaults.FALLBACK, text_column: str = "text",
                         batch_size: int = defaults.BATCH_SIZE, logits_dtype: str = defaults.LOGITS_DTYPE,
                         load_kwargs: dict | None = None, cache: bool | str | os.PathLike = True,
                         teacher_names: Sequence[str] | None = None, num_proc: int | None = None,
                         progress: bool = True,
                         return_report: bool = False, messages_column: str = "messages",
                         chat_templates: Sequence[str | None] | None = None, student_chat_template: str | None = None,
                         start_tokens: str = defaults.START_TOKENS, chunks: bool = defaults.PER_TOKEN_CE):
    """Build a packed FuseLLM training dataset from raw texts (see module docstring).

    The defaults are those of :mod:`fusekernels.pipeline.defaults`, shared with the command line
    (``fusekernels prepare`` and the step-by-step route give the same dataset).

    Args:
        texts: a list of str, or a ``datasets.Dataset`` with the string column ``text_column``.
        student_tokenizer: the target model's tokenizer (needs ``eos_token_id``); every teacher's
            distribution is aligned to its tokens and vocabulary.
        teachers: a sequence of ``(model, tokenizer)`` pairs. ``model`` is a loaded causal LM or
            a model argument (a Hugging Face folder, a ``.gguf`` file, a bundled model name such
            as ``"smollm2"`` or ``"gemma3"``, or a Hub model id: found before the split starts,
            loaded with ``load_kwargs`` only when its outputs are not cached); ``tokenizer`` is a
            tokenizer object, a path or a packaged tokenizer name (``fusekernels.tokenization.assets``).
        block_size: training block length; also the split window and the extraction length.
        split_margin: documents longer than ``block_size - split_margin`` tokens in some tokenizer
            are cut into windows of that size (the published margin is 48).
        k: entries of each teacher's distribution kept per position.
        logits_dtype: storage dtype of the teacher logits at every step (extraction cache, aligned
            rows, packed blocks): ``"float16"`` (default) or ``"float32"``, for teachers whose
            logits exceed the float16 range (+-65504; checked, never stored as inf).
        base_model: the student itself (model or model argument) when its own top-k is to be fused too
            (FuseLLM's continual training of a pretrained target); ``None`` for a fresh student.
        method: alignment mode of :data:`~fusekernels.tokenization.registry.ALIGNMENT_MODES`
            (``"byte_span"`` default, ``"compat_hard"``, ``"compat_soft"``, or one registered there).
        fallback: positions a teacher cannot serve (``"absent"`` default, ``"published"``); see
            :func:`fusekernels.pipeline.align_step.align_teachers`.
        cache: teacher-output disk cache: ``True`` (user cache folder), a folder, or ``False``.
        teacher_names: names used in the log lines and the report (default: file names / classes).
        messages_column: chat data: when ``texts`` is a ``datasets.Dataset`` with this column (or a
            list of conversations, lists of ``{"role", "content"}`` dicts), every model sees the
            conversations rendered with its own chat template, the teachers are aligned on the
            student's rendering per message content, and the blocks carry ``labels`` on the
            assistant turns only (:mod:`fusekernels.pipeline.chat`). Conversations are not split;
            they are truncated to ``block_size`` tokens.
        chat_templates: per teacher, a chat template overriding its tokenizer's (None = its own).
        student_chat_template: the same for the student tokenizer.
        start_tokens: ``"model"`` (default): every model is scored the way it was trained, its
            tokenizer's start tokens (BOS and the like) before each text; ``"published"``: the
            text alone, as the published recipe (see :func:`fusekernels.pipeline.extract.extract_teacher_topk`).
        chunks: also extract per-token CE and add the aligned-chunk columns (``teacher_chunk_span``,
            ``teacher_chunk_logprob`` for ``loss_type="alm"``, ``teacher_token_ce`` for
            ``metric_level="token"``; see :mod:`fusekernels.pipeline.align_step`). Text data only.
    Returns:
        the packed ``datasets.Dataset``, or ``(dataset, FusionDataReport)`` with ``return_report``.
    """
    from ..tokenization.registry import ALIGNMENT_MODES
    from .align_step import align_teachers, alignment_stats
    from .cache import cached_extract
    from .extract import start_token_ids
    from .io import load_tokenizer, resolve_model
    from .pack import pack_sequences
    from .split import split_long_texts

    chat = _is_chat(texts, messages_column)
    dataset = _as_chat_dataset(texts, messages_column) if chat else _as_dataset(texts, text_column)
    teachers = list(teachers)
    if not teachers and base_model is None:
        raise ValueError("teachers is empty and there is no base_model: nothing to fuse")
    for i, pair in enumerate(teachers):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"teachers[{i}] must be a (model, tokenizer) pair, got {type(pair).__name__}")
    if not isinstance(block_size, int) or block_size < 2:
        raise ValueError(f"block_size must be an int >= 2, got {block_size!r}")
    ALIGNMENT_MODES.check(method, "method")
    if getattr(student_tokenizer, "eos_token_id", None) is None:
        raise ValueError("student_tokenizer has no eos_token_id: the pipeline appends EOS to every text")
    models = [m for m, _ in teachers]
    names = list(teacher_names) if teacher_names is not None else [_name(m) for m in models]
    if len(names) != len(teachers):
        raise ValueError(f"teacher_names has {len(names)} entries for {len(teachers)} teachers")
    # every model given by path / bundled name / Hub id is found (assembled, fetched) before any work
    models = [resolve_model(m) if isinstance(m, (str, os.PathLike)) else m for m in models]
    if isinstance(base_model, (str, os.PathLike)):
        base_model = resolve_model(base_model)
    tokenizers = [t if hasattr(t, "encode") else load_tokenizer(t) for _, t in teachers]
    report = FusionDataReport(block_size=block_size)
    if chat:
        return _build_chat(dataset, student_tokenizer, models, tokenizers, names, report, block_size=block_size,
                           base_model=base_model, messages_column=messages_column, chat_templates=chat_templates,
                           student_chat_template=student_chat_template, num_proc=num_proc,
                           return_report=return_report,
                           extract=dict(k=k, max_length=block_size, batch_size=batch_size, text_column="text",
                                        logits_dtype=logits_dtype, load_kwargs=load_kwargs, cache=cache,
                                        progress=progress, start_tokens=start_tokens))

    start = time.perf_counter()
    split = split_long_texts(dataset.select_columns([text_column]), [student_tokenizer, *tokenizers], block_size,
                             text_column=text_column, margin=split_margin, num_proc=num_proc)
    report.texts = len(split)
    report.stages["split"] = {"seconds": time.perf_counter() - start, "texts": len(dataset)}

    extract = dict(k=k, max_length=block_size, batch_size=batch_size, text_column=text_column,
                   logits_dtype=logits_dtype, load_kwargs=load_kwargs, cache=cache, progress=progress,
                   start_tokens=start_tokens, per_token_ce=bool(chunks))
    sources = ([("base", base_model, student_tokenizer)] if base_model is not None else []) + \
        list(zip(names, models, tokenizers))
    rows, entries = [], []
    for name, model, tokenizer in sources:
        start = time.perf_counter()
        out, info = cached_extract(model, tokenizer, split, name=name, **extract)
        if info.path is not None:
            entries.append(str(info.path))
        seconds = time.perf_counter() - start
        tokens = sum(len(x) for x in out["input_ids"])
        rows.append(out)
        report.teachers.append({"name": name, "cache": info.status, "tokens": tokens, "seconds": seconds,
                                "tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
                                "start_tokens": start_token_ids(tokenizer) if start_tokens == "model" else []})
    if base_model is not None:
        base_rows, teacher_rows = rows[0], rows[1:]
    else:
        from .extract import tokenize_texts

        base_rows, teacher_rows = tokenize_texts(student_tokenizer, split, max_length=block_size,
                                                 text_column=text_column), rows

    start = time.perf_counter()
    # rows that fail alignment here come from this package's own extraction (or its cache): the
    # remedy is to recompute them, never to drop rows
    hint = ("the teacher outputs were computed or reused from the cache entries " + ", ".join(entries) + ": delete "
            "them (or pass cache=False, command line --no-cache) to recompute them; if the row fails again, check that "
            "every teacher's tokenizer belongs to its model") if entries else (
        "check that every teacher's tokenizer belongs to its model")
    aligned = align_teachers(base_rows, teacher_rows, base_tokenizer=student_tokenizer,
                             teacher_tokenizers=tokenizers, method=method, include_base_teacher=base_model is not None,
                             fallback=fallback, k=k, text_column=text_column, num_proc=num_proc, chunks=bool(chunks),
                             logits_dtype=logits_dtype, bad_row_hint=hint)
    seconds = time.perf_counter() - start
    stats = alignment_stats(aligned)
    report.student_positions = stats.positions
    report.stages["align"] = {"seconds": seconds, "tokens_per_s": stats.positions / seconds if seconds > 0 else 0.0,
                              "method": method}
    for entry, rate in zip(report.teachers, stats.rates):
        entry["coverage"] = rate

    start = time.perf_counter()
    packed = pack_sequences(aligned, block_size, num_proc=num_proc, logits_dtype=logits_dtype)
    seconds = time.perf_counter() - start
    if len(packed) == 0:
        raise ValueError(f"the texts give {stats.positions} student tokens, fewer than one block "
                         f"(block_size={block_size})")
    report.blocks = len(packed)
    report.stages["pack"] = {"seconds": seconds, "tokens_per_s": stats.positions / seconds if seconds > 0 else 0.0}
    return (packed, report) if return_report else packed


def _is_chat(texts, messages_column: str) -> bool:
    import datasets

    if isinstance(texts, datasets.Dataset):
        return messages_column in texts.column_names
    return (isinstance(texts, Sequence) and not isinstance(texts, str) and len(texts) > 0
            and isinstance(texts[0], (list, tuple)))


def _as_chat_dataset(texts, messages_column: str):
    import datasets

    if isinstance(texts, datasets.Dataset):
        if len(texts) == 0:
            raise ValueError("texts is empty")
        return texts.select_columns([messages_column])
    return datasets.Dataset.from_dict({messages_column: [list(c) for c in texts]})


def _build_chat(dataset, student_tokenizer, models, tokenizers, names, report, *, block_size, base_model,
                messages_column, chat_templates, student_chat_template, num_proc, return_report, extract):
    """The chat branch of :func:`build_fusion_dataset`: render -> extract -> align -> pack."""
    import datasets
    import numpy as np

    from .cache import cached_extract
    from .chat import align_chat_teachers, render_chat_dataset
    from .extract import tokenize_texts
    from .pack import pack_sequences

    templates = list(chat_templates) if chat_templates is not None else [None] * len(models)
    if len(templates) != len(models):
        raise ValueError(f"chat_templates has {len(templates)} entries for {len(models)} teachers")
    start = time.perf_counter()
    student_rows = render_chat_dataset(dataset, student_tokenizer, chat_template=student_chat_template,
                                       messages_column=messages_column, num_proc=num_proc)
    report.texts = len(student_rows)
    report.stages["render"] = {"seconds": time.perf_counter() - start, "texts": len(dataset)}
    spans = student_rows.select_columns(["content_spans", "label_spans"])
    if base_model is not None:
        own, info = cached_extract(base_model, student_tokenizer, student_rows, name="base", **extract)
        student_rows = datasets.concatenate_datasets([own, spans], axis=1)
        report.teachers.append({"name": "base", "cache": info.status})
    else:
        student_rows = tokenize_texts(student_tokenizer, student_rows, max_length=block_size)
    teacher_rows = []
    for name, model, tokenizer, template in zip(names, models, tokenizers, templates):
        rendered = render_chat_dataset(dataset, tokenizer, chat_template=template, messages_column=messages_column,
                                       num_proc=num_proc)
        start = time.perf_counter()
        out, info = cached_extract(model, tokenizer, rendered, name=name, **extract)
        teacher_rows.append(datasets.concatenate_datasets([out, rendered.select_columns(["content_spans"])], axis=1))
        report.teachers.append({"name": name, "cache": info.status, "seconds": time.perf_counter() - start})
    start = time.perf_counter()
    aligned = align_chat_teachers(student_rows, teacher_rows, student_tokenizer=student_tokenizer,
                                  teacher_tokenizers=tokenizers, k=extract["k"], logits_dtype=extract["logits_dtype"],
                                  include_base_teacher=base_model is not None)
    positions = sum(len(x) for x in aligned["input_ids"])
    report.student_positions = positions
    report.stages["align"] = {"seconds": time.perf_counter() - start, "method": "byte_span (per message)"}
    for entry, counts in zip(report.teachers, np.asarray(aligned["teacher_aligned"]).sum(axis=0)):
        entry["coverage"] = float(counts) / max(positions, 1)
    packed = pack_sequences(aligned, block_size, num_proc=num_proc, logits_dtype=extract["logits_dtype"])
    if len(packed) == 0:
        raise ValueError(f"the conversations give {positions} student tokens, fewer than one block "
                         f"(block_size={block_size})")
    report.blocks = len(packed)
    report.chat = True
    report.label_tokens = int(sum((np.asarray(x) != -100).sum() for x in packed["labels"]))
    return (packed, report) if return_report else packed


def _as_dataset(texts, text_column: str):
    import datasets

    if isinstance(texts, datasets.Dataset):
        if text_column not in texts.column_names:
            raise ValueError(f"texts has no column {text_column!r} (columns: {texts.column_names})")
        if len(texts) == 0:
            raise ValueError("texts is empty")
        return texts
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a list of str or a datasets.Dataset, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__}, expected str")
    if not texts:
        raise ValueError("texts is empty")
    return datasets.Dataset.from_dict({text_column: list(texts)})


def _name(model) -> str:
    if isinstance(model, (str, os.PathLike)):
        return os.path.basename(os.fspath(model).rstrip("/\\")) or os.fspath(model)
    path = getattr(getattr(model, "config", None), "_name_or_path", "")
    return os.path.basename(str(path).rstrip("/")) or type(model).__name__
