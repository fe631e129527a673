"""Data collator for fusion training on sparse (top-k) teacher targets.

Example format (one dict per sequence, what the fusekernels pipeline writes; lists, numpy
arrays or tensors are all accepted):

=================  ============================  ==============================================
column             shape, dtype                  meaning
=================  ============================  ==============================================
``input_ids``      [L] int                       base-model token ids
``labels``         [L] int, optional             next-token targets before the shift (default:
                                                 ``input_ids``; -100 = no CLM term)
``attention_mask`` [L] int/bool, optional        1 = real token (default: all ones)
``teacher_ids``    [L, n_teachers, k] int        base-vocabulary ids of each teacher's aligned
                                                 top-k at position t (the distribution that
                                                 predicts token t + 1); any value (e.g.
                                                 -1) at padding entries
``teacher_logits`` [L, n_teachers, k] float      their logits; ``-inf`` marks padding entries
                                                 (a position with fewer than k aligned pairs)
``teacher_ce``     [n_teachers] or               each teacher's cross-entropy metric, per
                   [L, n_teachers] float         sequence or per token (smaller is better)
``teacher_token_   [L, n_teachers] float,        per-position metric read by
ce``               optional                      ``metric_level="token"`` when present (the
                                                 pipeline's nats per byte of the aligned chunk)
``teacher_chunk_   [L, n_teachers] int,          ``chunks=True`` (``loss_type="alm"``): aligned
span``             optional                      chunk ending at row t: its rows, else 0
``teacher_chunk_   [L, n_teachers] float,        the teacher's log-likelihood of that chunk
logprob``          optional                      (see :mod:`fusekernels.tokenization.chunks`)
=================  ============================  ==============================================

Batch produced by :class:`FusionDataCollator` (B sequences padded to T on the right):
``input_ids`` [B, T] int64, ``attention_mask`` [B, T] int64, ``labels`` [B, T] int64 (-100 on
padding), ``teacher_ids`` [B, T, n_teachers, k] int32 (0 at padding entries), ``teacher_logits``
[B, T, n_teachers, k] float32 (``-inf`` on padding), ``teacher_ce`` [B, T, n_teachers] float32
(per-sequence metrics broadcast to every token), and with ``chunks=True`` ``teacher_chunk_span``
[B, T, n_teachers] int64 (0 on padding) and ``teacher_chunk_logprob`` [B, T, n_teachers] float32.
With ``packing=True`` the B sequences are concatenated into one row
([1, sum L] everywhere), ``position_ids`` restart at 0 for every sequence, the first label of
every sequence is -100 (so the shifted CLM target never crosses a boundary) and there is no
``attention_mask`` (Hugging Face models then detect the packed sequences from ``position_ids``).
No output ever has a vocabulary-sized dimension: targets stay sparse until the loss.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..pipeline.pack import METRIC_LEVELS

TEACHER_COLUMNS = ("teacher_ids", "teacher_logits", "teacher_ce")
# Optional key of an example: its row number in the dataset, named by error messages instead of
# its position in the batch (FusionTrainer's data loaders add it).
ROW_KEY = "_fusekernels_row"
CHUNK_COLUMNS = ("teacher_chunk_span", "teacher_chunk_logprob")
TOKEN_METRIC_COLUMN = "teacher_token_ce"
_INT32_LIMIT = 2**31  # teacher ids travel as int32


def _label(feature, index: int) -> str:
    """How errors name an example: its dataset row when the loader says (``ROW_KEY``), else its
    position in the batch."""
    if isinstance(feature, Mapping) and feature.get(ROW_KEY) is not None:
        return f"row {int(feature[ROW_KEY])}"
    return f"example {index}"


def _as_array(value: Any, column: str, index: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except ValueError as err:  # ragged nested lists
        raise ValueError(f"{index}: column {column!r} is ragged (all rows must have the same length)") from err


def _int_array(value: Any, column: str, index: str, ndim: int) -> np.ndarray:
    arr = _as_array(value, column, index)
    if arr.size == 0 and arr.ndim < ndim:
        arr = arr.reshape((0,) * ndim)
    if arr.ndim != ndim:
        raise ValueError(f"{index}: column {column!r} must have {ndim} dimension(s), got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iub":
        raise TypeError(f"{index}: column {column!r} must hold integers, got dtype {arr.dtype}")
    if arr.size and arr.dtype == np.uint64 and arr.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{index}: column {column!r} holds {arr.max()}, beyond the int64 range")
    return arr.astype(np.int64, copy=False)


def _float_array(value: Any, column: str, index: str) -> np.ndarray:
    arr = _as_array(value, column, index)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{index}: column {column!r} must hold floats, got dtype {arr.dtype}")
    return arr.astype(np.float32, copy=False)


class FusionDataCollator:
    """Pads (or packs) examples with sparse teacher targets into a training batch.

    Args:
        pad_token_id: id written into padded ``input_ids`` positions (they are masked anyway);
            must be an int: None (a tokenizer without a pad token) raises, pick e.g. the EOS id.
        num_teachers: expected number of teachers (checked on every example); None = take it
            from the first example and require the others to agree.
        vocab_size: when given, teacher ids at valid entries must lie in [0, vocab_size);
            otherwise in the int32 range of the batch. Ids at ``-inf`` padding entries are not
            checked (aligners pad with -1) and become 0 in the batch.
        metric_level: "sequence" (one metric per sequence and teacher; a per-token metric is
            averaged over the sequence's attended tokens, as the published packing step does)
            or "token" (requires per-token metrics ``[L, n_teachers]``).
        require_teacher_ce: False when the loss does not need metrics (no ``teacher_ce``
            column in the batch then).
        packing: padding-free mode (one concatenated row, ``position_ids`` per sequence).
        pad_to_multiple_of: round the padded length T up to a multiple of this.
        max_length: reject examples longer than this (None = no limit).
        chunks: also collate the aligned-chunk columns (``teacher_chunk_span``,
            ``teacher_chunk_logprob``) that ``loss_type="alm"`` reads; they are then required.
        allow_plain: a batch in which no example has any teacher column collates to the plain
            causal-LM batch (``input_ids``, ``attention_mask``, ``labels``; ``position_ids``
            when packing): evaluation on held-out text without teachers. FusionTrainer and
            ``FusionLossFunction.attach`` turn it on; training on such a batch still fails.

    ``__call__(features)`` takes a list of example dicts in the format of the module docstring
    and returns a dict of tensors; it raises ValueError / TypeError / KeyError naming the
    example and column for a missing column, a shape mismatch, NaN/+inf values or ids out
    of range.
    """

    def __init__(self, pad_token_id: int = 0, *, num_teachers: int | None = None, vocab_size: int | None = None,
                 metric_level: str = "sequence", require_teacher_ce: bool = True, packing: bool = False,
                 pad_to_multiple_of: int | None = None, max_length: int | None = None, allow_plain: bool = False,
                 chunks: bool = False):
        if metric_level not in METRIC_LEVELS:
            raise ValueError(f"metric_level must be one of {METRIC_LEVELS}, got {metric_level!r}")
        if num_teachers is not None and num_teachers < 1:
            raise ValueError(f"num_teachers must be >= 1, got {num_teachers}")
        if vocab_size is not None and vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")
        if pad_token_id is None:
            raise ValueError("pad_token_id is None (the tokenizer has no pad token, as for Llama and Mistral): pass "
                             "an explicit id, e.g. pad_token_id=tokenizer.eos_token_id; padded positions are masked "
                             "out of the attention and the loss, so any id of the vocabulary works")
        if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, (int, np.integer)):
            raise TypeError(f"pad_token_id must be an int, got {type(pad_token_id).__name__}")
        if pad_token_id < 0 or (vocab_size is not None and pad_token_id >= vocab_size):
            raise ValueError(f"pad_token_id={pad_token_id} is outside [0, {vocab_size or 'V'})")
        self.pad_token_id = int(pad_token_id)
        self.num_teachers = num_teachers
        self.vocab_size = vocab_size
        self.metric_level = metric_level
        self.require_teacher_ce = require_teacher_ce
        self.packing = packing
        self.pad_to_multiple_of = pad_to_multiple_of
        self.max_length = max_length
        self.allow_plain = bool(allow_plain)
        self.chunks = bool(chunks)

    # ------------------------------------------------------------------ validation
    def _example(self, feature: Mapping, index: str, num_teachers: int | None) -> dict[str, np.ndarray]:
        if not isinstance(feature, Mapping):
            raise TypeError(f"{index} must be a mapping of columns, got {type(feature).__name__}")
        required = ("input_ids", "teacher_ids", "teacher_logits") + (("teacher_ce",) if self.require_teacher_ce else ())
        missing = [c for c in required if c not in feature or feature[c] is None]
        if missing:
            hint = ""
            if "input_ids" in feature and all(c not in feature for c in TEACHER_COLUMNS):
                hint = ("; with a transformers.Trainer, set TrainingArguments(remove_unused_columns=False) "
                        "so that it keeps the teacher columns")
            raise KeyError(f"{index} is missing column(s) {missing}; fusion training needs {list(required)} "
                           f"(see fusekernels.integration.collator for the format){hint}")
        out = self._token_columns(feature, index)
        mask, length = out["attention_mask"], len(out["input_ids"])

        ids = _int_array(feature["teacher_ids"], "teacher_ids", index, 3)
        logits = _float_array(feature["teacher_logits"], "teacher_logits", index)
        if ids.shape[0] != length:
            raise ValueError(f"{index}: teacher_ids has {ids.shape[0]} positions, input_ids has {length}")
        if logits.shape != ids.shape:
            raise ValueError(f"{index}: teacher_logits shape {logits.shape} != teacher_ids shape {ids.shape}")
        n_teachers = ids.shape[1]
        expected = self.num_teachers if self.num_teachers is not None else num_teachers
        if n_teachers < 1 or ids.shape[2] < 1:
            raise ValueError(f"{index}: teacher_ids needs >= 1 teacher and k >= 1, got shape {ids.shape}")
        if expected is not None and n_teachers != expected:
            raise ValueError(f"{index}: has {n_teachers} teacher(s), expected {expected}")
        if np.isnan(logits).any() or np.isposinf(logits).any():
            raise ValueError(f"{index}: teacher_logits contains NaN or +inf (use -inf for padding entries)")
        out["teacher_ids"], out["teacher_logits"] = self._checked_ids(ids, logits, index), logits

        if self.require_teacher_ce:
            token = feature.get(TOKEN_METRIC_COLUMN) if self.metric_level == "token" else None
            column = TOKEN_METRIC_COLUMN if token is not None else "teacher_ce"
            out["teacher_ce"] = self._metric(token if token is not None else feature["teacher_ce"], index, length,
                                             n_teachers, mask, column)
        if self.chunks:
            out.update(self._chunk_columns(feature, index, length, n_teachers))
        return out

    def _chunk_columns(self, feature: Mapping, index: str, length: int, n_teachers: int) -> dict[str, np.ndarray]:
        missing = [c for c in CHUNK_COLUMNS if feature.get(c) is None]
        if missing:
            raise KeyError(f"{index} is missing column(s) {missing}: loss_type='alm' reads the aligned chunks "
                           "the pipeline writes (fusekernels.pipeline.align_step, chunks)")
        span = _int_array(feature["teacher_chunk_span"], "teacher_chunk_span", index, 2)
        logprob = _float_array(feature["teacher_chunk_logprob"], "teacher_chunk_logprob", index)
        for name, arr in (("teacher_chunk_span", span), ("teacher_chunk_logprob", logprob)):
            if arr.shape != (length, n_teachers):
                raise ValueError(f"{index}: {name} must have shape [{length}, {n_teachers}], got {arr.shape}")
        if (span < 0).any():
            raise ValueError(f"{index}: teacher_chunk_span must be >= 0")
        if not np.isfinite(logprob).all() or (logprob > 0).any():
            raise ValueError(f"{index}: teacher_chunk_logprob must be finite and <= 0")
        return {"teacher_chunk_span": span, "teacher_chunk_logprob": logprob}

    def _token_columns(self, feature: Mapping, index: str) -> dict[str, np.ndarray]:
        """``input_ids`` / ``labels`` / ``attention_mask`` of one example, checked, as int64 [L]."""
        input_ids = _int_array(feature["input_ids"], "input_ids", index, 1)
        length = len(input_ids)
        if length == 0:
            raise ValueError(f"{index}: input_ids is empty")
        if self.vocab_size is not None and (input_ids.min() < 0 or input_ids.max() >= self.vocab_size):
            bad = int(np.flatnonzero((input_ids < 0) | (input_ids >= self.vocab_size))[0])
            raise ValueError(f"{index}: input_ids contains id {int(input_ids[bad])} outside "
                             f"[0, {self.vocab_size}) at position {bad}")
        if self.max_length is not None and length > self.max_length:
            raise ValueError(f"{index}: length {length} exceeds max_length={self.max_length}")

        out = {"input_ids": input_ids}
        for column in ("labels", "attention_mask"):
            if feature.get(column) is not None:
                arr = _int_array(feature[column], column, index, 1)
                if len(arr) != length:
                    raise ValueError(f"{index}: {column} has length {len(arr)}, input_ids has {length}")
                out[column] = arr
        mask = out.get("attention_mask")
        if mask is None:
            mask = np.ones(length, dtype=np.int64)
        elif not np.isin(mask, (0, 1)).all():
            raise ValueError(f"{index}: attention_mask must hold only 0 and 1")
        out["attention_mask"] = mask
        labels = out.get("labels")
        out["labels"] = np.where(mask.astype(bool), input_ids, -100) if labels is None else labels

        return out

    def _checked_ids(self, ids: np.ndarray, logits: np.ndarray, index: str) -> np.ndarray:
        """int64 teacher ids with padding entries (``-inf`` logit) set to 0, after checking that every
        valid entry lies in [0, vocab_size) (or the int32 range of the batch buffer when the
        vocabulary size is unknown). Padding ids are free: aligners pad with -1."""
        valid = ~np.isneginf(logits)
        upper = self.vocab_size if self.vocab_size is not None else _INT32_LIMIT
        bad = valid & ((ids < 0) | (ids >= upper))
        if bad.any():
            position, teacher, entry = (int(i) for i in np.argwhere(bad)[0])
            bound = self.vocab_size if self.vocab_size is not None else "2**31 (int32; vocab_size unknown)"
            raise ValueError(f"{index}: teacher_ids contains id {ids[position, teacher, entry]} outside "
                             f"[0, {bound}) at position {position}, teacher {teacher}, entry {entry} "
                             "(ids at -inf padding entries may be anything)")
        return np.where(valid, ids, 0)

    def _metric(self, value: Any, index: str, length: int, n_teachers: int, mask: np.ndarray,
                column: str = "teacher_ce") -> np.ndarray:
        ce = _float_array(value, column, index)
        if not np.isfinite(ce).all():
            raise ValueError(f"{index}: {column} contains NaN or inf")
        if ce.shape == (n_teachers,):
            if self.metric_level == "token":
                raise ValueError(f"{index}: metric_level='token' needs per-token teacher_ce of shape "
                                 f"[{length}, {n_teachers}], got a per-sequence metric of shape {ce.shape}")
            return np.broadcast_to(ce, (length, n_teachers))
        if ce.shape != (length, n_teachers):
            raise ValueError(f"{index}: teacher_ce must have shape [{n_teachers}] or [{length}, {n_teachers}], "
                             f"got {ce.shape}")
        if self.metric_level == "sequence":
            weights = mask.astype(np.float32)[:, None]
            seq = (ce * weights).sum(0) / max(float(weights.sum()), 1.0)
            return np.broadcast_to(seq, (length, n_teachers))
        return ce

    # ------------------------------------------------------------------ collation
    def __call__(self, features: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        if not isinstance(features, Sequence) or isinstance(features, (str, bytes, Mapping)) or len(features) == 0:
            raise ValueError("features must be a non-empty list of example dicts")
        if self.allow_plain and all(isinstance(f, Mapping) and "input_ids" in f
                                    and all(f.get(c) is None for c in TEACHER_COLUMNS) for f in features):
            return self._plain([self._token_columns(f, _label(f, i)) for i, f in enumerate(features)])
        examples, n_teachers = [], None
        for index, feature in enumerate(features):
            example = self._example(feature, _label(feature, index), n_teachers)
            n_teachers = example["teacher_ids"].shape[1]
            examples.append(example)
        return self._pack(examples) if self.packing else self._pad(examples)

    def _plain(self, examples: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
        """Causal-LM batch without teacher tensors (``allow_plain``), padded or packed like the others."""
        if self.packing:
            keep = [e["attention_mask"].astype(bool) for e in examples]
            ids = [e["input_ids"][m] for e, m in zip(examples, keep) if m.any()]
            labels = [np.concatenate([[-100], e["labels"][m][1:]]) for e, m in zip(examples, keep) if m.any()]
            if not ids:
                raise ValueError("every example in the batch has an all-zero attention_mask")
            out = {"input_ids": np.concatenate(ids), "labels": np.concatenate(labels),
                   "position_ids": np.concatenate([np.arange(len(i), dtype=np.int64) for i in ids])}
            return {name: torch.from_numpy(value.astype(np.int64)[None]) for name, value in out.items()}
        length = self._padded_length(max(len(e["input_ids"]) for e in examples))
        out = {"input_ids": np.full((len(examples), length), self.pad_token_id, dtype=np.int64),
               "attention_mask": np.zeros((len(examples), length), dtype=np.int64),
               "labels": np.full((len(examples), length), -100, dtype=np.int64)}
        for b, e in enumerate(examples):
            for name in out:
                out[name][b, :len(e["input_ids"])] = e[name]
        return {name: torch.from_numpy(value) for name, value in out.items()}

    def _padded_length(self, length: int) -> int:
        multiple = self.pad_to_multiple_of
        return length if multiple is None else -(-length // multiple) * multiple

    def _pad(self, examples: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
        batch, n_teachers = len(examples), examples[0]["teacher_ids"].shape[1]
        length = self._padded_length(max(len(e["input_ids"]) for e in examples))
        k = max(e["teacher_ids"].shape[2] for e in examples)
        input_ids = np.full((batch, length), self.pad_token_id, dtype=np.int64)
        attention = np.zeros((batch, length), dtype=np.int64)
        labels = np.full((batch, length), -100, dtype=np.int64)
        ids = np.zeros((batch, length, n_teachers, k), dtype=np.int32)
        logits = np.full((batch, length, n_teachers, k), -np.inf, dtype=np.float32)
        ce = np.zeros((batch, length, n_teachers), dtype=np.float32)
        span = np.zeros((batch, length, n_teachers), dtype=np.int64) if self.chunks else None
        chunk_lp = np.zeros((batch, length, n_teachers), dtype=np.float32) if self.chunks else None
        for b, e in enumerate(examples):
            n, kk = len(e["input_ids"]), e["teacher_ids"].shape[2]
            input_ids[b, :n] = e["input_ids"]
            attention[b, :n] = e["attention_mask"]
            labels[b, :n] = e["labels"]
            ids[b, :n, :, :kk] = e["teacher_ids"]
            logits[b, :n, :, :kk] = e["teacher_logits"]
            if "teacher_ce" in e:
                ce[b, :n] = e["teacher_ce"]
            if self.chunks:
                span[b, :n], chunk_lp[b, :n] = e["teacher_chunk_span"], e["teacher_chunk_logprob"]
        out = {"input_ids": input_ids, "attention_mask": attention, "labels": labels,
               "teacher_ids": ids, "teacher_logits": logits}
        if self.require_teacher_ce:
            out["teacher_ce"] = ce
        if self.chunks:
            out["teacher_chunk_span"], out["teacher_chunk_logprob"] = span, chunk_lp
        return {name: torch.from_numpy(value) for name, value in out.items()}

    def _pack(self, examples: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
        k = max(e["teacher_ids"].shape[2] for e in examples)
        names = ("input_ids", "labels", "position_ids", "teacher_ids", "teacher_logits", "teacher_ce", *CHUNK_COLUMNS)
        pieces: dict[str, list[np.ndarray]] = {name: [] for name in names}
        for e in examples:
            n, n_teachers, kk = e["teacher_ids"].shape
            if not e["attention_mask"].all():
                # padding-free batches carry no attention mask: keep only the attended tokens
                keep = e["attention_mask"].astype(bool)
                e = {name: (value[keep] if value.shape[:1] == (n,) else value) for name, value in e.items()}
                n = len(e["input_ids"])
                if n == 0:
                    continue
            labels = e["labels"].copy()
            labels[0] = -100  # the shifted target of the previous sequence's last token
            ids = np.zeros((n, n_teachers, k), dtype=np.int32)
            logits = np.full((n, n_teachers, k), -np.inf, dtype=np.float32)
            ids[:, :, :kk], logits[:, :, :kk] = e["teacher_ids"], e["teacher_logits"]
            pieces["input_ids"].append(e["input_ids"])
            pieces["labels"].append(labels)
            pieces["position_ids"].append(np.arange(n, dtype=np.int64))
            pieces["teacher_ids"].append(ids)
            pieces["teacher_logits"].append(logits)
            if "teacher_ce" in e:
                pieces["teacher_ce"].append(np.asarray(e["teacher_ce"], dtype=np.float32))
            for name in CHUNK_COLUMNS if self.chunks else ():
                pieces[name].append(np.asarray(e[name], dtype=np.int64 if name == "teacher_chunk_span" else np.float32))
        if not pieces["input_ids"]:
            raise ValueError("every example in the batch has an all-zero attention_mask")
        return {name: torch.from_numpy(np.concatenate(parts)[None]) for name, parts in pieces.items() if parts}
