"""Step 3 of the pipeline: put every teacher's top-k on the base tokenization and stack them.

Inputs are row-aligned ``datasets.Dataset`` objects of the same texts (same order):

- ``base``: the base model's rows, ``input_ids`` [m] (text + EOS, see
  :func:`fusekernels.pipeline.extract.tokenize_texts`); with ``include_base_teacher=True`` also its
  own ``topk_ids`` / ``topk_logits`` / ``metric_ce`` (:func:`extract_teacher_topk` output), which
  become teacher 0 as in FuseLLM.
- ``teachers``: one :func:`extract_teacher_topk` output per blending model, with that model's
  tokenizer in ``teacher_tokenizers``.

Each blending teacher goes through :func:`fusekernels.tokenization.align_dataset` (``method``:
``"byte_span"`` default, or the published ``"compat_hard"`` / ``"compat_soft"``). The result has
the columns :class:`fusekernels.integration.FusionDataCollator` and
:func:`fusekernels.pipeline.pack.pack_sequences` take: ``input_ids`` [m] int32, ``teacher_ids``
[m, T, k] int32, ``teacher_logits`` [m, T, k] (``-inf`` = padding, padded ids are 0) and
``teacher_ce`` [T] float32, plus ``teacher_aligned`` [T] int32: per teacher the number of base
positions whose target is that teacher's real distribution.

Positions where a teacher's distribution does not reach the base tokenization, and what each
``fallback`` makes of them:

- ``"published"`` (spec sections 5 and 7, the published result end to end): a position the
  aligner cannot serve keeps the aligner's one-hot pair (current base token id, logit 1.0); a
  position whose aligned list is empty (compatible mode: the step matched but none of the
  teacher's top-k ids exists in the base vocabulary) takes the base model's own distribution,
  i.e. teacher 0's entries at that position, as the published collator does. No teacher is ever
  absent, so MinCE / AvgCE weigh every teacher by its metric exactly as published. This needs
  the base model as teacher 0 (``include_base_teacher=True``) with ``"compat_hard"`` (checked
  upfront) and with ``"compat_soft"`` when its vocabulary map leaves ids unmapped (checked when
  it happens); the byte-span aligner never leaves a list empty.
- ``"absent"``: the teacher is left absent (all padding) at every position where it has no real
  distribution, so the loss ignores it there (MinCE picks among the teachers present, AvgCE
  renormalises over them; with no teacher present the row has no fusion term).

Which positions got a real teacher distribution is the aligner's own matched mask (the
``return_mask`` output of :func:`fusekernels.tokenization.align_dataset`), never guessed from the
aligned values: a genuine one-entry distribution on the current token is kept.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

FALLBACKS = ("published", "absent")


@dataclass
class AlignmentStats:
    """Per teacher: base positions in total and those with a real (non-fallback) distribution."""
    positions: int
    aligned: list[int]

    @property
    def rates(self) -> list[float]:
        return [a / self.positions if self.positions else 0.0 for a in self.aligned]


def align_teachers(base, teachers: Sequence, *, base_tokenizer, teacher_tokenizers: Sequence,
                   method: str = "byte_span", include_base_teacher: bool = True, fallback: str = "published",
                   vocab_maps: Sequence | None = None, k: int | None = None, text_column: str | None = "text",
                   logits_dtype: str = "float16", batch_size: int = 64, num_proc: int | None = None,
                   check: str = "prefix"):
    """Align and stack teachers (see module docstring). Returns a ``datasets.Dataset``.

    ``check`` is how the aligners verify that a base row and a teacher row cover the same text
    (see :func:`fusekernels.tokenization.check_same_text`): ``"prefix"`` by default because
    extraction truncates every tokenization at its model's maximum length, so one row may cover a
    prefix of the other's text."""
    import datasets

    from fusekernels.tokenization.dataset import align_dataset
    from fusekernels.tokenization.profile import TokenizerProfile

    teachers = list(teachers)
    teacher_tokenizers = list(teacher_tokenizers)
    if len(teachers) != len(teacher_tokenizers):
        raise ValueError(f"{len(teachers)} teacher datasets but {len(teacher_tokenizers)} teacher_tokenizers")
    if not teachers and not include_base_teacher:
        raise ValueError("no teacher: pass teacher datasets or include_base_teacher=True")
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
    if fallback == "published" and not include_base_teacher and method == "compat_hard" and teachers:
        raise ValueError("fallback='published' with method='compat_hard' gives a position whose aligned list is "
                         "empty the base model's own distribution (teacher 0): it needs include_base_teacher=True; "
                         "pass fallback='absent' to leave the teacher absent at such positions instead")
    if vocab_maps is not None and len(vocab_maps) != len(teachers):
        raise ValueError(f"vocab_maps has {len(vocab_maps)} entries for {len(teachers)} teachers")
    own = ["topk_ids", "topk_logits", "metric_ce"] if include_base_teacher else []
    _require(base, ["input_ids", *own], "base")
    for t, teacher in enumerate(teachers):
        _require(teacher, ["input_ids", "topk_ids", "topk_logits", "metric_ce"], f"teachers[{t}]")
        _check_same_rows(base, teacher, t, text_column)
    if len(base) == 0:
        raise ValueError("base dataset is empty")
    use_text = text_column if text_column and text_column in base.column_names else None
    if k is None:
        widths = [len(d[0]["topk_ids"][0]) for d in ([base] if include_base_teacher else []) + teachers]
        k = max(widths)

    base_profile = TokenizerProfile.from_tokenizer(base_tokenizer)
    text_cols = [use_text] if use_text else []
    parts = [base.select_columns(["input_ids"] + text_cols + own)]
    for t, (teacher, tokenizer) in enumerate(zip(teachers, teacher_tokenizers)):
        renamed = teacher.select_columns(["input_ids", "topk_ids", "topk_logits", "metric_ce"]).rename_columns(
            {"input_ids": "blend_input_ids", "topk_ids": "blend_topk_ids", "topk_logits": "blend_topk_logits",
             "metric_ce": "blend_metric_ce"})
        joined = datasets.concatenate_datasets([parts[0].select_columns(["input_ids"] + text_cols), renamed], axis=1)
        aligned = align_dataset(joined, base_profile, TokenizerProfile.from_tokenizer(tokenizer), method=method, k=k,
                                vocab_map=None if vocab_maps is None else vocab_maps[t],
                                columns={"text": use_text}, prefix=f"teacher{t}", logits_dtype="float32",
                                batch_size=batch_size, num_proc=num_proc, desc=f"align teacher {t + 1}",
                                check=check, return_mask=True)
        parts.append(aligned.select_columns([f"teacher{t}_topk_ids", f"teacher{t}_topk_logits",
                                             f"teacher{t}_metric_ce", f"teacher{t}_matched"]))
    combined = datasets.concatenate_datasets(parts, axis=1)
    # (ids column, logits column, metric column, matched-mask column or None for the base model)
    sources = [("topk_ids", "topk_logits", "metric_ce", None)] if include_base_teacher else []
    sources += [(f"teacher{t}_topk_ids", f"teacher{t}_topk_logits", f"teacher{t}_metric_ce", f"teacher{t}_matched")
                for t in range(len(teachers))]
    n_teachers = len(sources)
    features = datasets.Features({
        "input_ids": datasets.List(datasets.Value("int32")),
        "teacher_ids": datasets.Array3D(shape=(None, n_teachers, k), dtype="int32"),
        "teacher_logits": datasets.Array3D(shape=(None, n_teachers, k), dtype=logits_dtype),
        "teacher_ce": datasets.List(datasets.Value("float32")),
        "teacher_aligned": datasets.List(datasets.Value("int32")),
        **({use_text: base.features[use_text]} if use_text else {}),
    })

    def stack(batch):
        out = {"input_ids": [], "teacher_ids": [], "teacher_logits": [], "teacher_ce": [], "teacher_aligned": []}
        for row, ids in enumerate(batch["input_ids"]):
            ids = np.asarray(ids, dtype=np.int64)
            t_ids = np.zeros((len(ids), n_teachers, k), dtype=np.int32)
            t_logits = np.full((len(ids), n_teachers, k), -np.inf, dtype=np.float32)
            aligned = []
            for t, (id_col, logit_col, _, mask_col) in enumerate(sources):
                tid, tlg = _fit(_stacked(batch[id_col][row]), _stacked(batch[logit_col][row]), k)
                if tid.shape[0] != len(ids):
                    raise ValueError(f"row {row}: teacher {t} has {tid.shape[0]} positions, input_ids {len(ids)}")
                valid = np.isfinite(tlg) & (tid >= 0)
                # the base model's own top-k is its real distribution everywhere
                matched = np.ones(len(ids), dtype=bool) if mask_col is None else \
                    np.asarray(batch[mask_col][row], dtype=bool)
                if fallback == "absent":
                    valid &= matched[:, None]
                t_ids[:, t] = np.where(valid, tid, 0)
                t_logits[:, t] = np.where(valid, tlg, -np.inf)
                empty = ~valid.any(1)
                if fallback == "published" and empty.any():
                    if not include_base_teacher:  # compat_soft with a vocab_map that leaves ids unmapped
                        raise ValueError(f"row {row}: teacher {t} has an empty aligned list and there is no base "
                                         "teacher (include_base_teacher=False) for fallback='published' to fall "
                                         "back to; use fallback='absent'")
                    t_ids[empty, t], t_logits[empty, t] = t_ids[empty, 0], t_logits[empty, 0]
                aligned.append(int(matched.sum()))
            out["input_ids"].append(ids.astype(np.int32))
            out["teacher_ids"].append(t_ids)
            out["teacher_logits"].append(t_logits.astype(logits_dtype))
            out["teacher_ce"].append(np.array([batch[ce][row] for _, _, ce, _ in sources], dtype=np.float32))
            out["teacher_aligned"].append(np.array(aligned, dtype=np.int32))
        if use_text:
            out[use_text] = batch[use_text]
        return out

    return combined.with_format("numpy").map(stack, batched=True, batch_size=batch_size, num_proc=num_proc,
                                             remove_columns=combined.column_names, features=features,
                                             desc="stack teachers").with_format(None)


def alignment_stats(aligned) -> AlignmentStats:
    """Totals of the ``teacher_aligned`` column of :func:`align_teachers` output."""
    _require(aligned, ["input_ids", "teacher_aligned"], "aligned dataset")
    positions = sum(len(x) for x in aligned["input_ids"])
    counts = np.asarray(aligned["teacher_aligned"], dtype=np.int64).sum(0)
    return AlignmentStats(positions=positions, aligned=counts.tolist())


def _require(dataset, columns, what):
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing} (has {dataset.column_names})")


def _check_same_rows(base, teacher, t, text_column):
    if len(teacher) != len(base):
        raise ValueError(f"teachers[{t}] has {len(teacher)} rows but base has {len(base)}: both must hold the "
                         "same texts in the same order")
    if text_column and text_column in base.column_names and text_column in teacher.column_names:
        if base[text_column] != teacher[text_column]:
            raise ValueError(f"teachers[{t}] column {text_column!r} differs from base: rows are not the same texts")


def _stacked(value) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype == object:
        arr = np.stack([np.asarray(v) for v in arr])
    return arr


def _fit(ids: np.ndarray, logits: np.ndarray, k: int):
    """Pad (id -1, logit -inf) or check an [m, k'] top-k to width k."""
    if ids.ndim != 2 or ids.shape != logits.shape:
        raise ValueError(f"top-k ids {ids.shape} and logits {logits.shape} must both be [m, k]")
    width = ids.shape[1]
    if width > k:
        raise ValueError(f"a teacher stores {width} entries per position, more than k={k}")
    if width < k:
        ids = np.pad(ids, ((0, 0), (0, k - width)), constant_values=-1)
        logits = np.pad(logits.astype(np.float32), ((0, 0), (0, k - width)), constant_values=-np.inf)
    return ids, logits.astype(np.float32)
