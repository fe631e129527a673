"""Step 3 of the pipeline: put every teacher's top-k on the base tokenization and stack them.

Inputs are row-aligned ``datasets.Dataset`` objects of the same texts (same order):

- ``base``: the base model's rows, ``input_ids`` [m] (text + EOS, see
  :func:`fusekernels.pipeline.extract.tokenize_texts`); with ``include_base_teacher=True`` also its
  own ``topk_ids`` / ``topk_logits`` / ``metric_ce`` (:func:`extract_teacher_topk` output), which
  become teacher 0 as in FuseLLM.
- ``teachers``: one :func:`extract_teacher_topk` output per blending model, with that model's
  tokenizer in ``teacher_tokenizers``.

Each blending teacher is aligned as :func:`fusekernels.tokenization.align_dataset` does it (``method``:
an entry of :data:`~fusekernels.tokenization.registry.ALIGNMENT_MODES`, ``"byte_span"`` default, or the
published ``"compat_hard"`` / ``"compat_soft"``), all teachers of a
batch in the same ``Dataset.map`` call on Arrow batches: byte-span alignment runs as one native call
per teacher and batch, stacking is vectorised over the batch's positions, and no Python list is
built per row. The result has
the columns :class:`fusekernels.integration.FusionDataCollator` and
:func:`fusekernels.pipeline.pack.pack_sequences` take: ``input_ids`` [m] int32, ``teacher_ids``
[m, T, k] int32, ``teacher_logits`` [m, T, k] (``-inf`` = padding, padded ids are 0) and
``teacher_ce`` [T] float32, plus ``teacher_aligned`` [T] int32: per teacher the number of base
positions whose target is that teacher's real distribution.

Positions where a teacher's distribution does not reach the base tokenization, and what each
``fallback`` makes of them:

- ``"published"`` (the published FuseLLM result end to end): a position the
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

Aligned chunks (``chunks=True``, the default when every input carries ``per_step_metric_ce``, i.e.
was extracted with ``per_token_ce=True``): per base position and teacher, from the chunks of text
both tokenizations encode with whole tokens (:mod:`fusekernels.tokenization.chunks`):

- ``teacher_chunk_span`` / ``teacher_chunk_logprob`` [m, T]: at the last row of a chunk its number
  of rows and the teacher's log-likelihood of its text (``loss_type="alm"``);
- ``teacher_token_ce`` [m, T]: the teacher's nats per byte on the chunk that the row predicts,
  the per-position metric of ``metric_level="token"`` (MinCE / AvgCE per token, comparable across
  tokenizers); where no chunk covers a row, the teacher's rate over its whole row.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .._optional import require
from ..tokenization.dataset import LOGITS_DTYPES
from ..tokenization.registry import ALIGNMENT_MODES
from . import defaults
from .extract import FLOAT16_MAX

FALLBACKS = ("published", "absent")
CE_COLUMN = "per_step_metric_ce"
CHUNK_OUTPUTS = ("teacher_chunk_span", "teacher_chunk_logprob", "teacher_token_ce")
UNKNOWN_RATE = 100.0  # nats per byte of a teacher without any chunk in a row: never preferred
BAD_ROW_POLICIES = ("error", "skip")


@dataclass
class AlignmentStats:
    """Per teacher: base positions in total and those with a real (non-fallback) distribution."""
    positions: int
    aligned: list[int]

    @property
    def rates(self) -> list[float]:
        return [a / self.positions if self.positions else 0.0 for a in self.aligned]


def align_teachers(base, teachers: Sequence, *, base_tokenizer, teacher_tokenizers: Sequence,
                   method: str = defaults.METHOD, include_base_teacher: bool = defaults.BASE_TEACHER,
                   fallback: str = defaults.FALLBACK,
                   vocab_maps: Sequence | None = None, k: int | None = None, text_column: str | None = "text",
                   logits_dtype: str = defaults.LOGITS_DTYPE, batch_size: int = 64, num_proc: int | None = None,
                   check: str = "prefix", on_bad_row: str = "error", return_skipped: bool = False,
                   chunks: bool | None = None, bad_row_hint: str | None = None):
    """Align and stack teachers (see module docstring). Returns a ``datasets.Dataset``.

    Defaults (:mod:`fusekernels.pipeline.defaults`): no base teacher, ``fallback="absent"``, as
    :func:`~fusekernels.pipeline.api.build_fusion_dataset` and the command line.

    ``check`` is how the aligners verify that a base row and a teacher row cover the same text
    (see :func:`fusekernels.tokenization.check_same_text`): ``"prefix"`` by default because
    extraction truncates every tokenization at its model's maximum length, so one row may cover a
    prefix of the other's text.

    ``on_bad_row``: ``"error"`` (default) stops at the first row that fails a check (ids outside a
    vocabulary, top-k shapes, NaN / +inf logits, texts that differ); ``"skip"`` checks every row
    first, drops the bad ones from all inputs and warns with their number. With
    ``return_skipped=True`` the result is ``(dataset, skipped)``, ``skipped`` a list of
    ``(row, reason)`` of the dropped input rows (empty with ``"error"``). ``bad_row_hint``: what
    the error of a bad row suggests (default: ``on_bad_row='skip'``; a caller whose inputs are a
    cache says to recompute them instead).

    ``chunks``: add the aligned-chunk columns (module docstring); ``None`` (default): when every
    teacher dataset (and the base, with ``include_base_teacher``) has ``per_step_metric_ce``."""
    require("datasets", "align_teachers")
    import datasets

    from fusekernels.tokenization.profile import TokenizerProfile

    teachers = list(teachers)
    teacher_tokenizers = list(teacher_tokenizers)
    if len(teachers) != len(teacher_tokenizers):
        raise ValueError(f"{len(teachers)} teacher datasets but {len(teacher_tokenizers)} teacher_tokenizers")
    if not teachers and not include_base_teacher:
        raise ValueError("no teacher: pass teacher datasets or include_base_teacher=True")
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
    mode = ALIGNMENT_MODES.get_entry(method)
    if fallback == "published" and not include_base_teacher and mode.empty_lists and teachers:
        raise ValueError(f"fallback='published' with method={method!r} gives a position whose aligned list is "
                         "empty the base model's own distribution (teacher 0): it needs include_base_teacher=True; "
                         "pass fallback='absent' to leave the teacher absent at such positions instead")
    if on_bad_row not in BAD_ROW_POLICIES:
        raise ValueError(f"on_bad_row must be one of {BAD_ROW_POLICIES}, got {on_bad_row!r}")
    if vocab_maps is not None and len(vocab_maps) != len(teachers):
        raise ValueError(f"vocab_maps has {len(vocab_maps)} entries for {len(teachers)} teachers")
    own = ["topk_ids", "topk_logits", "metric_ce"] if include_base_teacher else []
    if include_base_teacher and chunks is not False and CE_COLUMN in base.column_names:
        own.append(CE_COLUMN)
    _require(base, ["input_ids", *own], "base")
    for t, teacher in enumerate(teachers):
        _require(teacher, ["input_ids", "topk_ids", "topk_logits", "metric_ce"], f"teachers[{t}]")
        _check_same_rows(base, teacher, t, text_column, per_row=on_bad_row == "skip")
    if len(base) == 0:
        raise ValueError("base dataset is empty")
    with_ce = [d for d in ([base] if include_base_teacher else []) + teachers]
    has_ce = all(CE_COLUMN in d.column_names for d in with_ce)
    if chunks is None:
        chunks = has_ce
    elif chunks and not has_ce:
        raise ValueError(f"chunks=True needs the per-token CE column {CE_COLUMN!r} in every teacher dataset "
                         "(extract with per_token_ce=True)")
    use_text = text_column if text_column and text_column in base.column_names else None
    if k is None:
        widths = [len(d[0]["topk_ids"][0]) for d in ([base] if include_base_teacher else []) + teachers]
        k = max(widths)

    from fusekernels.fingerprint import map_fingerprint, profile_fingerprint, vocab_map_fingerprint
    from fusekernels.storage import cached_map
    from fusekernels.tokenization.byte_span import CHECKS

    if check not in CHECKS:
        raise ValueError(f"check must be one of {CHECKS}, got {check!r}")
    if logits_dtype not in LOGITS_DTYPES:
        raise ValueError(f"logits_dtype must be one of {LOGITS_DTYPES}, got {logits_dtype!r}")
    base_profile = TokenizerProfile.from_tokenizer(base_tokenizer)
    profiles = [TokenizerProfile.from_tokenizer(tok) for tok in teacher_tokenizers]
    skipped: list = []
    if on_bad_row == "skip":
        skipped = find_bad_rows(base, teachers, base_profile=base_profile, teacher_profiles=profiles, method=method,
                                check=check, text_column=text_column, include_base_teacher=include_base_teacher)
        if skipped:
            import warnings

            warnings.warn(f"align_teachers: skipped {len(skipped)} of {len(base)} rows that fail the checks "
                          f"(first: row {skipped[0][0]}: {skipped[0][1]})", stacklevel=2)
            bad = {row for row, _ in skipped}
            keep = [i for i in range(len(base)) if i not in bad]
            if not keep:
                raise ValueError(f"every one of the {len(base)} rows fails the checks (first: row "
                                 f"{skipped[0][0]}: {skipped[0][1]})")
            base, teachers = base.select(keep), [teacher.select(keep) for teacher in teachers]
    maps = list(vocab_maps) if vocab_maps is not None else [None] * len(teachers)
    tables = [mode.build_tables(base_profile, p, m) for p, m in zip(profiles, maps)]
    text_cols = [use_text] if use_text else []
    parts = [base.select_columns(["input_ids"] + text_cols + own)]
    for t, teacher in enumerate(teachers):
        names = ["input_ids", "topk_ids", "topk_logits", "metric_ce"] + ([CE_COLUMN] if chunks else [])
        parts.append(teacher.select_columns(names).rename_columns({c: f"teacher{t}_{c}" for c in names}))
    joined = datasets.concatenate_datasets(parts, axis=1) if len(parts) > 1 else parts[0]
    n_teachers = len(teachers) + bool(include_base_teacher)
    features = datasets.Features({
        "input_ids": datasets.List(datasets.Value("int32")),
        "teacher_ids": datasets.Array3D(shape=(None, n_teachers, k), dtype="int32"),
        "teacher_logits": datasets.Array3D(shape=(None, n_teachers, k), dtype=logits_dtype),
        "teacher_ce": datasets.List(datasets.Value("float32")),
        "teacher_aligned": datasets.List(datasets.Value("int32")),
        **({use_text: base.features[use_text]} if use_text else {}),
        **({"teacher_chunk_span": datasets.Array2D(shape=(None, n_teachers), dtype="int32"),
            "teacher_chunk_logprob": datasets.Array2D(shape=(None, n_teachers), dtype="float32"),
            "teacher_token_ce": datasets.Array2D(shape=(None, n_teachers), dtype="float32")} if chunks else {}),
    })
    fingerprint = map_fingerprint(joined, ("align_teachers", method, include_base_teacher, fallback, k, use_text,
                                        logits_dtype, check, bool(chunks), profile_fingerprint(base_profile),
                                        [profile_fingerprint(p) for p in profiles],
                                        [vocab_map_fingerprint(m) if mode.uses_vocab_map else None
                                         for m in maps]))
    stacker = _Stacker(base=base_profile, profiles=profiles, tables=tables, method=method, k=k,
                       include_base_teacher=include_base_teacher, fallback=fallback, use_text=use_text,
                       logits_dtype=np.dtype(logits_dtype), check=check,
                       threads=1 if num_proc and num_proc > 1 else 0, chunks=bool(chunks))
    try:
        result = cached_map(
            joined.with_format("arrow"), stacker, label="align-teachers", fingerprint=fingerprint, batched=True,
            with_indices=True, batch_size=batch_size, num_proc=num_proc, remove_columns=joined.column_names,
            features=features, desc="align teachers").with_format(None)
    except ValueError as exc:
        if on_bad_row == "skip":
            raise
        hint = bad_row_hint or ("to drop such rows instead, pass on_bad_row='skip' (command line: --on-bad-row skip; "
                                "--check sets how texts are compared)")
        raise ValueError(f"{exc}; {hint}") from None
    return (result, skipped) if return_skipped else result


def find_bad_rows(base, teachers: Sequence, *, base_profile, teacher_profiles: Sequence, method: str = "byte_span",
                  check: str = "prefix", text_column: str | None = "text",
                  include_base_teacher: bool = True) -> list[tuple[int, str]]:
    """``(row, reason)`` of every row that :func:`align_teachers` cannot align: base or teacher ids
    outside their vocabulary, top-k arrays of the wrong shape, NaN / +inf logits, a text that
    differs between the inputs, or token sequences that do not cover the same text (``check``)."""
    from fusekernels.tokenization.byte_span import check_same_text, check_topk

    use_text = text_column if text_column and text_column in base.column_names else None
    reads_text = ALIGNMENT_MODES.get_entry(method).reads_text is not None
    bad: list[tuple[int, str]] = []
    base_np = base.with_format("numpy")
    teachers_np = [t.with_format("numpy") for t in teachers]
    for row in range(len(base)):
        b_row = base_np[row]
        try:
            b = base_profile.check_ids(b_row["input_ids"], "base input_ids")
            if include_base_teacher:
                check_topk(_stacked(b_row["topk_ids"]), _stacked(b_row["topk_logits"]), b.size,
                            base_profile.vocab_size)
            for t, (teacher, profile) in enumerate(zip(teachers_np, teacher_profiles)):
                t_row = teacher[row]
                if use_text and use_text in t_row and str(t_row[use_text]) != str(b_row[use_text]):
                    raise ValueError(f"teacher {t + 1}: column {use_text!r} differs from the base row")
                try:
                    a = profile.check_ids(t_row["input_ids"], "input_ids")
                    check_topk(_stacked(t_row["topk_ids"]), _stacked(t_row["topk_logits"]), a.size,
                                profile.vocab_size)
                    text = str(b_row[use_text]) if use_text and reads_text else None
                    check_same_text(b, a, base_profile, profile, text=text, check=check)
                except ValueError as exc:
                    raise ValueError(f"teacher {t + 1}: {exc}") from None
        except ValueError as exc:
            bad.append((row, str(exc)))
    return bad



@dataclass
class _Stacker:
    """One ``Dataset.map`` batch (Arrow in, Arrow out): align every blending teacher natively
    and stack all teachers into ``[m, T, k]`` arrays, vectorised over the batch's positions."""

    base: object
    profiles: list
    tables: list
    method: str
    k: int
    include_base_teacher: bool
    fallback: str
    use_text: str | None
    logits_dtype: np.dtype
    check: str
    threads: int
    chunks: bool = False

    def __call__(self, table, indices):
        import pyarrow as pa

        from fusekernels.tokenization.batch import arrow_lists, arrow_matrix, list_array, nested_array
        from fusekernels.tokenization.dataset import align_arrow_batch

        k, own = self.k, self.include_base_teacher
        ids, off = arrow_lists(table.column("input_ids"))
        rows, positions = off.size - 1, ids.size
        n_teachers = len(self.profiles) + own
        row_of = np.repeat(np.arange(rows), np.diff(off))
        t_ids = np.zeros((positions, n_teachers, k), dtype=np.int32)
        t_logits = np.full((positions, n_teachers, k), -np.inf, dtype=np.float32)
        aligned = np.zeros((rows, n_teachers), dtype=np.int32)
        metrics = []
        for t in range(n_teachers):
            if own and t == 0:
                tid, tlg = self._own_topk(table, off, indices, arrow_matrix)
                matched = np.ones(positions, dtype=bool)
                metrics.append(table.column("metric_ce"))
            else:
                i = t - own
                cols = {"base_ids": "input_ids", "blend_ids": f"teacher{i}_input_ids",
                        "topk_ids": f"teacher{i}_topk_ids", "topk_logits": f"teacher{i}_topk_logits",
                        "metric_ce": f"teacher{i}_metric_ce", "text": self.use_text}
                tid, tlg, matched, _ = align_arrow_batch(table, base=self.base, blend=self.profiles[i],
                                                         method=self.method, tables=self.tables[i], columns=cols,
                                                         k=k, threads=self.threads, check=self.check, rows=indices)
                metrics.append(table.column(cols["metric_ce"]))
            valid = np.isfinite(tlg) & (tid >= 0)
            if self.fallback == "absent":
                valid &= matched[:, None]
            t_ids[:, t] = np.where(valid, tid, 0)
            t_logits[:, t] = np.where(valid, tlg, -np.inf)
            empty = ~valid.any(1)
            if self.fallback == "published" and empty.any():
                if not own:  # compat_soft with a vocab_map that leaves ids unmapped
                    row = indices[int(row_of[np.flatnonzero(empty)[0]])]
                    raise ValueError(f"row {row}: teacher {t} has an empty aligned list and there is no base "
                                     "teacher (include_base_teacher=False) for fallback='published' to fall "
                                     "back to; use fallback='absent'")
                t_ids[empty, t], t_logits[empty, t] = t_ids[empty, 0], t_logits[empty, 0]
            aligned[:, t] = np.bincount(row_of, weights=matched, minlength=rows).astype(np.int32)
        if self.logits_dtype == np.float16:  # a logit beyond +-65504 would be stored as inf
            over = np.isfinite(t_logits) & (np.abs(t_logits) > FLOAT16_MAX)
            if over.any():
                row = indices[int(row_of[np.flatnonzero(over.any(axis=(1, 2)))[0]])]
                raise ValueError(f"row {row}: teacher logits reach {float(np.abs(t_logits[over]).max()):.4g}, beyond "
                                 "the float16 range (+-65504); store them as float32 (logits_dtype='float32', "
                                 "command line: --logits-dtype float32)")
        ce = np.stack([m.to_numpy().astype(np.float32) for m in metrics], axis=1) if metrics else \
            np.zeros((rows, 0), np.float32)
        per_row = np.arange(rows + 1, dtype=np.int64) * n_teachers
        out = {"input_ids": list_array(ids.astype(np.int32, copy=False), off),
               "teacher_ids": nested_array(t_ids, off),
               "teacher_logits": nested_array(t_logits.astype(self.logits_dtype, copy=False), off),
               "teacher_ce": list_array(ce.reshape(-1), per_row),
               "teacher_aligned": list_array(aligned.reshape(-1), per_row)}
        if self.use_text:
            out[self.use_text] = table.column(self.use_text)
        if self.chunks:
            for name, values in zip(CHUNK_OUTPUTS, self._chunk_columns(table, ids, off, indices)):
                out[name] = nested_array(values, off)
        return pa.table(out)

    def _chunk_columns(self, table, ids, off, indices):
        """[M, T] chunk span, chunk log-likelihood and nats per byte of every teacher (module doc)."""
        from fusekernels.tokenization.batch import arrow_lists
        from fusekernels.tokenization.chunks import aligned_chunks_flat

        own, positions = self.include_base_teacher, ids.size
        n_teachers = len(self.profiles) + own
        span = np.zeros((positions, n_teachers), np.int32)
        logprob = np.zeros((positions, n_teachers), np.float32)
        rate = np.full((positions, n_teachers), np.nan, np.float32)
        texts = table.column(self.use_text).to_pylist() if self.use_text else None
        for t in range(n_teachers):
            prefix = "" if own and t == 0 else f"teacher{t - own}_"
            profile = self.base if own and t == 0 else self.profiles[t - own]
            t_ids, t_off = (ids, off) if own and t == 0 else arrow_lists(table.column(f"{prefix}input_ids"))
            ce, ce_off = arrow_lists(table.column(f"{prefix}{CE_COLUMN}"))
            if not np.array_equal(ce_off, t_off):
                bad = int(np.flatnonzero(np.diff(ce_off) != np.diff(t_off))[0])
                raise ValueError(f"row {indices[bad]}: teacher {t} has {ce_off[bad + 1] - ce_off[bad]} per-token CE "
                                 f"values for {t_off[bad + 1] - t_off[bad]} tokens")
            # one vectorised call per teacher and batch (the aligner above already checked the texts)
            got = aligned_chunks_flat(ids, off, t_ids, t_off, ce, self.base, profile, texts=texts, check="none")
            span[:, t], logprob[:, t] = got.span, got.logprob
            # rows no chunk covers: the teacher's rate over the row (its quality there is unknown)
            fill = np.where(np.isfinite(got.sequence_nats_per_byte), got.sequence_nats_per_byte, UNKNOWN_RATE)
            rate[:, t] = np.where(np.isnan(got.nats_per_byte), np.repeat(fill, np.diff(off)), got.nats_per_byte)
        return span, logprob, rate

    def _own_topk(self, table, off, indices, arrow_matrix):
        """The base model's own top-k [M, k] (padded to k), checked against ``input_ids``."""
        mats = [arrow_matrix(table.column(c)) for c in ("topk_ids", "topk_logits")]
        if any(m is None for m in mats):  # ragged rows: stack them one by one
            rows = [tuple(_stacked(v) for v in pair) for pair in zip(table.column("topk_ids").to_pylist(),
                                                                     table.column("topk_logits").to_pylist())]
            lengths = np.array([r[0].shape[0] for r in rows])
            mats = [(np.concatenate([_fit(*r, self.k)[j] for r in rows]), np.r_[0, np.cumsum(lengths)])
                    for j in (0, 1)]
        (tid, tid_off), (tlg, tlg_off) = mats
        for got in (tid_off, tlg_off):
            if not np.array_equal(got, off):
                bad = int(np.flatnonzero(np.diff(got) != np.diff(off))[0])
                raise ValueError(f"row {indices[bad]}: teacher 0 has {got[bad + 1] - got[bad]} positions, "
                                 f"input_ids {off[bad + 1] - off[bad]}")
        return _fit(tid, tlg, self.k)


def alignment_stats(aligned) -> AlignmentStats:
    """Totals of the ``teacher_aligned`` column of :func:`align_teachers` output."""
    from fusekernels.tokenization.batch import arrow_lists

    _require(aligned, ["input_ids", "teacher_aligned"], "aligned dataset")
    table = aligned.with_format("arrow")[:]  # Arrow columns: no Python list per row
    _, offsets = arrow_lists(table.column("input_ids"))
    values, per_row = arrow_lists(table.column("teacher_aligned"))
    widths = np.diff(per_row)
    if widths.size and (widths != widths[0]).any():
        raise ValueError("aligned dataset: teacher_aligned rows have different numbers of teachers")
    counts = values.astype(np.int64).reshape(len(widths), -1).sum(0) if widths.size else np.zeros(0, np.int64)
    return AlignmentStats(positions=int(offsets[-1]), aligned=counts.tolist())


def _require(dataset, columns, what):
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing} (has {dataset.column_names})")


def _check_same_rows(base, teacher, t, text_column, per_row=False):
    if len(teacher) != len(base):
        raise ValueError(f"teachers[{t}] has {len(teacher)} rows but base has {len(base)}: both must hold the "
                         "same texts in the same order")
    if per_row:
        return  # find_bad_rows compares the texts row by row
    if text_column and text_column in base.column_names and text_column in teacher.column_names:
        if not base.with_format("arrow")[text_column].equals(teacher.with_format("arrow")[text_column]):
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
