"""Step 2 of the pipeline: each model's top-k next-token distribution over a text dataset.

Per text: ``text`` is tokenized without special tokens, the EOS id appended and
the ids truncated to ``max_length`` (the published recipe tokenizes ``text + eos_token``; adding
the id avoids the EOS string merging with the preceding text). Labels are the input ids.

Each model is scored the way it was trained (``start_tokens="model"``, the default): the ids its
tokenizer puts before a text when it adds special tokens (BOS and the like, see
:func:`start_token_ids`; none for tokenizers that add none, and none for a text that already
starts with them, e.g. a chat rendering) are prepended to the model's input, and every output is
kept for the text's own tokens only, so the stored rows have the same shape either way (models
such as Gemma-3 depend on their BOS: 4.50 nats per token on KJV verses without it, 3.22 with
it). ``start_tokens="published"`` feeds the text alone, as the published recipe does.

One forward pass gives logits ``[B, T, V]``; per text position t the top-k (default 10) logits and
their ids (the distribution that predicts token t+1) and the cross-entropy of token t+1 are kept,
via ``fusekernels.loss.teacher_topk`` in the logits' own precision (the published code casts to
fp16 first, which loses precision and can tie distinct logits).

Output columns (one row per input row, order kept; other input columns are kept unless
``keep_columns=False``):

| column | type | content |
|---|---|---|
| ``input_ids`` | ``list[int32] [L]`` | the model's token ids (text + EOS, truncated) |
| ``topk_ids`` | ``Array2D int32 [L, k]`` | top-k token ids per position, logits descending |
| ``topk_logits`` | ``Array2D float16 [L, k]`` | their logits (``logits_dtype`` selects float32) |
| ``metric_ce`` | ``float32`` | mean next-token CE over the L-1 labelled positions |
| ``per_step_metric_ce`` | ``list[float32] [L]`` | optional (``per_token_ce=True``); last entry 0 |

A text giving a single id (empty text) has no labelled position: its ``metric_ce`` is 0.

Resumable and shardable: with ``output_dir`` the rows are processed in shards of ``shard_size``
rows, each saved (``datasets.Dataset.save_to_disk``) under ``output_dir/shard-NNNNN`` as soon as
it is done and skipped when the run restarts. Every shard records a content checksum tied to
this extraction (:func:`fusekernels.storage.write_checksums`), verified when a resumed run skips
it and by :func:`load_extracted`: a damaged or foreign shard raises
:class:`fusekernels.storage.DamagedFileError` naming the file. Shards are written under unique
temporary names, so two runs on the same folder never write into each other's files (the first
to finish a shard keeps it). Under ``accelerate launch`` / torchrun the shards are split between
processes (``accelerate.PartialState().split_between_processes``; CPU-only launches use the gloo
backend); every process then returns the complete dataset. Without ``output_dir`` every process
computes every row.

Logits that do not fit the storage dtype (beyond +-65504 for float16, or NaN / +inf from the
model) stop the extraction with an error naming the row, instead of being stored as inf.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._optional import require
from ..tokenization.dataset import LOGITS_DTYPES

if TYPE_CHECKING:  # annotations only: torch is imported where a model runs
    import torch

META_NAME = "extract_meta.json"
logger = logging.getLogger(__name__)

START_TOKENS = ("model", "published")


def start_token_ids(tokenizer) -> list[int]:
    """The ids ``tokenizer`` puts before a text when it adds its special tokens (e.g. ``[bos]`` for
    Gemma or Llama-3 tokenizers, ``[]`` for GPT-2-style ones): what the model saw in training."""
    for probe in ("Hello world", "a"):
        plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
        full = tokenizer(probe, add_special_tokens=True)["input_ids"]
        for start in range(len(full) - len(plain) + 1):
            if full[start:start + len(plain)] == plain:
                return [int(i) for i in full[:start]]
    return []


def model_name(model) -> str:
    """A short name of ``model`` for progress bars and log lines: the file stem of a path
    (``.../smollm2-135m.Q8_0.gguf`` -> ``smollm2-135m.Q8_0``, a folder -> its name), else the last
    part of the loaded model's ``name_or_path`` ("" when it has none)."""
    if isinstance(model, (str, os.PathLike)):
        path = Path(os.fspath(model).rstrip("/\\"))
        return path.stem if path.suffix.lower() == ".gguf" else path.name or os.fspath(model)
    source = str(getattr(getattr(model, "config", None), "_name_or_path", "") or "").rstrip("/\\")
    if not source:
        return ""
    path = Path(source)
    return path.stem if path.suffix.lower() == ".gguf" else path.name


def extract_teacher_topk(model, tokenizer, dataset, *, k: int = 10, batch_size: int = 8,
                         max_length: int | None = None, text_column: str = "text",
                         per_token_ce: bool = False, logits_dtype: str = "float16",
                         output_dir: str | os.PathLike | None = None, shard_size: int = 1024,
                         device: str | torch.device | None = None, keep_columns: bool = True,
                         progress: bool = True, precision: str = "fp32", start_tokens: str = "model",
                         name: str | None = None):
    """Run ``model`` over ``dataset[text_column]`` and return a ``datasets.Dataset`` of its top-k.

    Args:
        model: a causal LM returning ``.logits`` ``[B, T, V]`` (e.g. ``AutoModelForCausalLM``).
        tokenizer: its tokenizer (needs ``eos_token_id``).
        dataset: a ``datasets.Dataset`` with a string column ``text_column``.
        k: entries kept per position (1 <= k <= V).
        max_length: truncation length; default ``min(tokenizer.model_max_length,
            model.config.max_position_embeddings)``.
        device: where the forward pass runs; default CUDA when available, else the model's device.
        output_dir: makes the run resumable (see module docstring); ``None`` keeps it in memory.
        precision: "fp32" (default) or "published": logits cast to fp16 before the top-k and the
            CE, token CE rounded to fp16 and ``metric_ce`` computed in fp16, as published.
        start_tokens: "model" (default): the model sees the ids its tokenizer adds before a text
            (:func:`start_token_ids`, e.g. BOS) and outputs are kept for the text's tokens only;
            "published": the text alone, as the published recipe.
        name: the model's name in the progress bars (default: :func:`model_name` of ``model``).
    """
    require("datasets", "extract_teacher_topk")
    import datasets
    import torch

    _validate(dataset, text_column, k, batch_size, shard_size, logits_dtype, tokenizer)
    from fusekernels.loss.registry import PRECISIONS

    PRECISIONS.check(precision)
    if start_tokens not in START_TOKENS:
        raise ValueError(f"start_tokens must be one of {START_TOKENS}, got {start_tokens!r}")
    start_ids = start_token_ids(tokenizer) if start_tokens == "model" else []
    max_length = _max_length(model, tokenizer, max_length, reserve=len(start_ids))
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(vocab, int) and k > vocab:
        raise ValueError(f"k={k} is larger than the model's vocabulary ({vocab})")
    if getattr(model, "hf_device_map", None):  # already dispatched over devices by accelerate: keep it
        device = model.device
    else:
        device = torch.device(device) if device is not None else _default_device(model)
        model = model.to(device)
    model.eval()
    shards = [(start, min(start + shard_size, len(dataset))) for start in range(0, len(dataset), shard_size)]
    runner = _ShardRunner(model, tokenizer, k, batch_size, max_length, text_column, per_token_ce,
                          logits_dtype, device, keep_columns)
    runner.precision, runner.start = precision, start_ids
    name = model_name(model) if name is None else name
    label = f"extract {name}" if name else "extract"  # progress bars say which model runs
    if output_dir is None:
        return datasets.concatenate_datasets([
            runner(dataset.select(range(a, b)), progress, f"{label} shard {i + 1}/{len(shards)}", first_row=a)
            for i, (a, b) in enumerate(shards)])

    from fusekernels.fingerprint import json_fingerprint
    from fusekernels.storage import remove_stale_temps

    out = Path(output_dir)
    state = _partial_state()
    # (hashes the weights: only for a resumable run)
    config = _resume_config(model, tokenizer, dataset, k=k, batch_size=batch_size, max_length=max_length,
                            text_column=text_column, per_token_ce=per_token_ce, logits_dtype=logits_dtype,
                            precision=precision, shard_size=shard_size, keep_columns=keep_columns,
                            start_tokens=start_ids)
    resumed = _check_meta(out, config)  # every process, so that all of them stop on a mismatch
    tag = json_fingerprint(config)  # ties every shard's checksum record to this extraction
    if state.is_main_process:
        _write_meta(out, config)
        remove_stale_temps(out, ".shard-", marker=".tmp")  # left by killed runs
        if resumed:
            done = sum((out / f"shard-{i:05d}").is_dir() for i in range(len(shards)))
            logger.info(f"resuming: {done} of {len(shards)} shards done in {out}")
    state.wait_for_everyone()
    with state.split_between_processes(list(range(len(shards)))) as mine:
        for shard in mine:
            path = out / f"shard-{shard:05d}"
            if path.is_dir():
                from fusekernels.storage import verify_checksums

                verify_checksums(path, tag=tag, required=True)  # finished in an earlier run: still intact?
                continue
            a, b = shards[shard]
            part = runner(dataset.select(range(a, b)), progress, f"{label} shard {shard + 1}/{len(shards)}",
                          first_row=a)
            _save_shard(part, out, path, tag)
    state.wait_for_everyone()
    return load_extracted(out, verify=False)


def _save_shard(part, out: Path, path: Path, tag: str) -> None:
    """Write one shard under a unique temporary name (held under a lock, see
    :func:`fusekernels.storage.owned_temp`), record its checksums, then rename it into place; a
    shard another run finished meanwhile is kept and this copy dropped."""
    from fusekernels._interrupt import check_interrupted
    from fusekernels.storage import owned_temp, write_checksums

    with owned_temp(out, f".{path.name}.tmp-") as tmp:
        try:
            part.save_to_disk(str(tmp))
            write_checksums(tmp, tag=tag)
            check_interrupted()  # a Ctrl-C swallowed while the shard was written stops here
            try:
                os.replace(tmp, path)  # a shard exists only once completely written
            except OSError:
                if not path.is_dir():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # another run on this folder finished it first
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # e.g. disk full: no half shard is left behind
            raise


def load_extracted(output_dir: str | os.PathLike, *, verify: bool = True, require_checksums: bool = False):
    """Load (and concatenate) the shards written by :func:`extract_teacher_topk`.

    ``verify``: check every shard's content checksum first (:class:`fusekernels.storage.DamagedFileError`
    naming the first damaged file); shards of an older version without a checksum record are
    accepted unless ``require_checksums``."""
    require("datasets", "load_extracted")
    import datasets

    from fusekernels.fingerprint import json_fingerprint
    from fusekernels.storage import DamagedFileError, verify_checksums

    out = Path(output_dir)
    meta_path = out / META_NAME
    if not meta_path.is_file():
        raise FileNotFoundError(f"{out} holds no extraction output ({META_NAME} missing)")
    try:
        meta = json.loads(meta_path.read_text())
        n_shards = -(-meta["num_rows"] // meta["shard_size"])
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise DamagedFileError(meta_path, f"not a valid extraction metadata file ({type(exc).__name__})") from None
    missing = [i for i in range(n_shards) if not (out / f"shard-{i:05d}").is_dir()]
    if missing:
        raise FileNotFoundError(f"{out}: {len(missing)} of {n_shards} shards not finished (first: {missing[0]})")
    if n_shards == 0:
        raise ValueError(f"{out}: the extraction had no rows")
    if verify:
        required = require_checksums or meta.get("format", 0) >= 3
        for i in range(n_shards):
            verify_checksums(out / f"shard-{i:05d}", tag=json_fingerprint(meta), required=required)
    return datasets.concatenate_datasets([datasets.load_from_disk(str(out / f"shard-{i:05d}"))
                                          for i in range(n_shards)])


def tokenize_for_teacher(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Text + EOS ids, no special tokens, truncated to ``max_length``."""
    eos = tokenizer.eos_token_id
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [(ids + [eos])[:max_length] for ids in encoded]


def tokenize_texts(tokenizer, dataset, *, max_length: int, text_column: str = "text", batch_size: int = 1000,
                   num_proc: int | None = None):
    """Add ``input_ids`` (int32, text + EOS, truncated; the ids :func:`extract_teacher_topk` stores)
    to ``dataset``: the base rows of :func:`fusekernels.pipeline.align_step.align_teachers` when the
    base model is not one of the teachers."""
    require("datasets", "tokenize_texts")
    from datasets import List, Value

    if text_column not in dataset.column_names:
        raise ValueError(f"dataset has no column {text_column!r} (columns: {dataset.column_names})")
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has no eos_token_id: the pipeline appends EOS to every text")
    if not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length must be an int >= 1, got {max_length!r}")
    from fusekernels import __version__
    from fusekernels.fingerprint import json_fingerprint, tokenizer_fingerprint
    from fusekernels.storage import cached_map

    features = dataset.features.copy()
    features["input_ids"] = List(Value("int32"))
    # deterministic, and written to the user cache (never next to the input dataset)
    fingerprint = json_fingerprint(["tokenize", __version__, dataset._fingerprint, tokenizer_fingerprint(tokenizer),
                                    max_length, text_column])[:16]
    return cached_map(dataset, lambda batch: {"input_ids": tokenize_for_teacher(tokenizer, batch[text_column],
                                                                                max_length)},
                      label="tokenize", fingerprint=fingerprint, batched=True, batch_size=batch_size,
                      num_proc=num_proc, features=features, desc="tokenize")


class _ShardRunner:
    def __init__(self, model, tokenizer, k, batch_size, max_length, text_column, per_token_ce,
                 logits_dtype, device, keep_columns):
        self.model, self.tokenizer, self.k, self.batch_size = model, tokenizer, k, batch_size
        self.max_length, self.text_column, self.per_token_ce = max_length, text_column, per_token_ce
        self.logits_dtype, self.device, self.keep_columns = logits_dtype, device, keep_columns
        self.precision = "fp32"
        self.start: list[int] = []  # prepended to every text that does not already begin with them
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def features(self, dataset):
        from datasets import Array2D, Features, List, Value

        feats = dict(dataset.features) if self.keep_columns else {}
        feats.update({"input_ids": List(Value("int32")),
                      "topk_ids": Array2D(shape=(None, self.k), dtype="int32"),
                      "topk_logits": Array2D(shape=(None, self.k), dtype=self.logits_dtype),
                      "metric_ce": Value("float32")})
        if self.per_token_ce:
            feats["per_step_metric_ce"] = List(Value("float32"))
        return Features(feats)

    def __call__(self, dataset, progress=True, desc="extract", first_row=0):
        import datasets

        from fusekernels._interrupt import check_interrupted

        texts = dataset[self.text_column]
        ids = tokenize_for_teacher(self.tokenizer, texts, self.max_length)
        rows = [None] * len(ids)
        batches = length_batches([len(x) for x in ids], self.batch_size)
        bar = _bar(len(ids), progress, desc)
        for batch in batches:
            check_interrupted()
            for i, row in zip(batch, self._forward([ids[i] for i in batch], [first_row + i for i in batch])):
                rows[i] = row
            if bar is not None:
                bar.update(len(batch))
        if bar is not None:
            bar.close()
        columns = {name: dataset[name] for name in dataset.column_names} if self.keep_columns else {}
        for name in ("input_ids", "topk_ids", "topk_logits", "metric_ce") + (
                ("per_step_metric_ce",) if self.per_token_ce else ()):
            columns[name] = [r[name] for r in rows]
        return datasets.Dataset.from_dict(columns, features=self.features(dataset))

    def _forward(self, batch_ids: list[list[int]], row_ids: list[int]) -> list[dict]:
        import torch

        with torch.inference_mode():
            return self._forward_batch(torch, batch_ids, row_ids)

    def _forward_batch(self, torch, batch_ids: list[list[int]], row_ids: list[int]) -> list[dict]:
        from fusekernels.loss import teacher_topk

        start = self.start
        # per row: the start ids it gets (none when the text already begins with them)
        prefixes = [[] if not start or ids[:len(start)] == start else start for ids in batch_ids]
        lengths = torch.tensor([len(p) + len(x) for p, x in zip(prefixes, batch_ids)])
        offsets = torch.tensor([len(p) for p in prefixes])
        width = int(lengths.max())
        input_ids = torch.full((len(batch_ids), width), self.pad_id, dtype=torch.long)
        for row, (prefix, ids) in enumerate(zip(prefixes, batch_ids)):
            input_ids[row, :len(prefix) + len(ids)] = torch.tensor(prefix + ids, dtype=torch.long)
        positions = torch.arange(width)[None, :]
        mask = positions < lengths[:, None]
        # next-token labels: position t is scored on id t+1; the last real position has none
        labels = torch.full_like(input_ids, -100)
        labels[:, :-1] = input_ids[:, 1:].masked_fill(~mask[:, 1:], -100)
        logits = self.model(input_ids=input_ids.to(self.device),
                            attention_mask=mask.long().to(self.device)).logits
        if logits.shape[-1] < self.k:
            raise ValueError(f"k={self.k} is larger than the model's vocabulary ({logits.shape[-1]})")
        # all rows at once (padding rows included: no [N, V] copy of the real rows); results are small
        ids, values, _, ce = teacher_topk(logits, labels.to(logits.device), self.k, precision=self.precision)
        del logits
        # outputs of the text's own tokens only (the start positions are context)
        keep = (mask & (positions >= offsets[:, None])).to(ids.device)
        ids, values, ce = ids[keep], values[keep], ce[keep]
        ids, values, ce = ids.cpu().numpy().astype(np.int32), values.float().cpu().numpy(), ce.float().cpu().numpy()
        rows, offset = [], 0
        for n, ids_n in enumerate(batch_ids):
            length = len(ids_n)
            seq = slice(offset, offset + length)
            offset += length
            check_storable_logits(values[seq], self.logits_dtype, f"row {row_ids[n]}")
            seq_ce = ce[seq]
            labelled = length - 1
            if self.precision == "published":  # fp16 sum of fp16 token CEs / count, in fp16
                metric = np.float32((torch.from_numpy(seq_ce[:labelled]).half().sum() / max(labelled, 1)).half())
            else:
                metric = np.float32(seq_ce[:labelled].sum(dtype=np.float64) / max(labelled, 1))
            row = {"input_ids": np.asarray(ids_n, dtype=np.int32),
                   "topk_ids": ids[seq],
                   "topk_logits": values[seq].astype(self.logits_dtype),
                   "metric_ce": metric}
            if self.per_token_ce:
                row["per_step_metric_ce"] = seq_ce.astype(np.float32)
            rows.append(row)
        return rows


FLOAT16_MAX = 65504.0


def check_storable_logits(values: np.ndarray, dtype: str, where: str) -> None:
    """Raise ``ValueError`` (naming ``where``) when top-k logits cannot be stored in ``dtype``: NaN
    or +inf (a broken model), or finite values beyond the float16 range (they would become inf).
    -inf is allowed (entries a model masks out; padding)."""
    values = np.asarray(values)
    if np.isnan(values).any() or np.isposinf(values).any():
        raise ValueError(f"{where}: the model's logits contain NaN or +inf (a broken model or an overflow in its "
                         "dtype; try --dtype float32)")
    if np.dtype(dtype) == np.float16:
        finite = values[np.isfinite(values)]
        peak = float(np.abs(finite).max()) if finite.size else 0.0
        if peak > FLOAT16_MAX:
            raise ValueError(f"{where}: the model's logits reach {peak:.4g}, beyond the float16 range (+-65504): they "
                             "would be stored as inf; store them as float32 (logits_dtype='float32', command line: "
                             "--logits-dtype float32)")


def length_batches(lengths, batch_size: int) -> list[list[int]]:
    """Row indices of each forward batch: rows sorted by length (longest first, stable) and cut
    into batches of ``batch_size``, so that similar lengths share a batch and little is padded."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


def padding_fraction(lengths, *, batch_size: int, shard_size: int, grouped: bool = True) -> float:
    """Share of the forward pass's positions that are padding, for rows of these ``lengths`` run
    in shards of ``shard_size`` rows and batches of ``batch_size``: with length grouping (what
    :func:`extract_teacher_topk` does) or in dataset order (``grouped=False``)."""
    lengths = list(lengths)
    padded = 0
    for start in range(0, len(lengths), shard_size):
        part = lengths[start:start + shard_size]
        batches = (length_batches(part, batch_size) if grouped else
                   [list(range(s, min(s + batch_size, len(part)))) for s in range(0, len(part), batch_size)])
        padded += sum(len(b) * max(part[i] for i in b) for b in batches)
    return 1.0 - sum(lengths) / padded if padded else 0.0


def _validate(dataset, text_column, k, batch_size, shard_size, logits_dtype, tokenizer):
    if text_column not in dataset.column_names:
        raise ValueError(f"dataset has no column {text_column!r} (columns: {dataset.column_names})")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be an int >= 1, got {shard_size!r}")
    if logits_dtype not in LOGITS_DTYPES:
        raise ValueError(f"logits_dtype must be one of {LOGITS_DTYPES}, got {logits_dtype!r}")
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has no eos_token_id: the pipeline appends EOS to every text")
    if len(dataset) == 0:
        raise ValueError("dataset is empty")


def _max_length(model, tokenizer, max_length, reserve: int = 0):
    """The text-token truncation length: ``max_length``, else the model's limit less the
    ``reserve`` start tokens prepended to its input."""
    if max_length is not None:
        if not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be an int >= 1, got {max_length!r}")
        return max_length
    limits = [getattr(tokenizer, "model_max_length", None),
              getattr(getattr(model, "config", None), "max_position_embeddings", None)]
    limits = [int(x) for x in limits if isinstance(x, int) and 0 < x < 10**7]  # HF uses 1e30 for "none"
    if not limits:
        raise ValueError("max_length not given and neither the tokenizer nor the model config defines one")
    return max(1, min(limits) - reserve)


def _default_device(model) -> torch.device:
    import torch

    if torch.cuda.is_available():
        return _partial_state().device  # this process's GPU under a multi-process launch
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


# Resume metadata key -> the option (CLI flag / argument) that changes it, for error messages.
RESUME_OPTIONS = {
    "k": "--k", "max_length": "--max-length", "per_token_ce": "--per-token-ce", "logits_dtype": "--logits-dtype",
    "precision": "--precision",
    "shard_size": "--shard-size", "num_rows": "--data (row count)", "text_column": "--text-column",
    "keep_columns": "keep_columns", "texts_sha256": "--data (texts)", "tokenizer": "--tokenizer",
    "model_weights": "--model (weights)", "model_dtype": "--dtype", "batch_size": "--batch-size",
    "pad_id": "--tokenizer (pad id)", "padding_side": "padding side", "format": "format version",
    "start_tokens": "--start-tokens",
}
_META_FORMAT = 3  # 3: shards carry content checksums


def _resume_config(model, tokenizer, dataset, **options) -> dict:
    """Every input and option that shapes the stored output: a resumed run must match all of them.

    ``batch_size`` is included because rows are padded to the longest of their batch (right
    padding, pad id recorded): other batch compositions change the low bits of the logits.
    """
    from fusekernels.fingerprint import model_fingerprint, texts_fingerprint, tokenizer_fingerprint

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return {**options, "format": _META_FORMAT, "num_rows": len(dataset),
            "texts_sha256": texts_fingerprint(dataset[options["text_column"]]),
            "tokenizer": tokenizer_fingerprint(tokenizer), "pad_id": pad_id, "padding_side": "right",
            "model_weights": model_fingerprint(model), "model_dtype": _model_dtype(model)}


def _model_dtype(model) -> str:
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters()})
    return "+".join(dtypes) if dtypes else "none"


def _check_meta(out: Path, config: dict) -> bool:
    """True when ``out`` holds an earlier run with the same config (resume); ``ValueError`` naming
    the differing options when it holds another one; False for a new run."""
    meta_path = out / META_NAME
    if not meta_path.is_file():
        return False
    try:
        old = json.loads(meta_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        from fusekernels.storage import DamagedFileError

        raise DamagedFileError(meta_path, f"not valid JSON ({exc})") from None
    if not isinstance(old, dict):
        old = {}
    if old != config:
        changed = sorted(key for key in set(old) | set(config) if old.get(key) != config.get(key))
        names = sorted({RESUME_OPTIONS.get(key, key) for key in changed})
        raise ValueError(f"{out} holds shards of a different extraction: cannot resume with another "
                         f"{', '.join(names)} (metadata differs in {changed}); use a new output folder or delete it")
    return True


def _write_meta(out: Path, config: dict):
    from fusekernels.storage import atomic_write_json

    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / META_NAME
    if not meta_path.is_file():
        atomic_write_json(meta_path, config)


def _partial_state():
    import torch
    from accelerate import PartialState

    # accelerate treats a CPU-only torchrun launch as one process unless told cpu=True
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    return PartialState(cpu=True) if multi_cpu else PartialState()


def _bar(total, enabled, desc):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="seq")
