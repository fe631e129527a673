"""Hugging Face ``Trainer`` integration of the sparse fusion loss (FuseLLM / FuseChat training).

``FusionTrainer`` trains a causal LM on batches from :class:`FusionDataCollator` with
``lam * CLM + (1 - lam) * fusion``. How the pieces fit Hugging Face's loop:

- The teacher columns (``teacher_ids``, ``teacher_logits``, ``teacher_ce``) are kept by
  ``remove_unused_columns`` and popped from the inputs before the model runs; the model never
  sees them and never computes its own loss.
- Row t of the logits predicts token t + 1: its CLM label is ``labels[t + 1]`` and its fusion
  target is the teachers' top-k at position t (what the pipeline stores there).
- Gradient accumulation and multi-process training are exact: every micro-batch divides by
  counts of the whole accumulated (and, with ``average_tokens_across_devices``, all-process)
  batch, the counts Hugging Face passes as ``num_items_in_batch``. With
  ``fusion_positions="labels"`` (default) the fusion term covers the rows that have a CLM label,
  so both terms share that count. With ``fusion_positions="attention"`` (the published recipe)
  it covers every attended row, counted the same way into ``num_fusion_items``.
- Memory: for Llama-like models (``model.<base_model_prefix>`` + a plain ``nn.Linear``
  ``lm_head``) the trainer runs the model with ``logits_to_keep`` set to no position, captures
  the final hidden states, and computes the loss from them and the LM-head weight in token
  chunks (:func:`fusekernels.loss.fused_linear.fused_linear_fusion_loss`): no ``[B, T, V]``
  logits tensor exists at all. Other models return their logits once and the loss reads them.

Usage (``dataset`` holds the columns documented in :mod:`fusekernels.integration.collator`)::

    trainer = FusionTrainer(model=model, args=TrainingArguments(...), train_dataset=dataset,
                            processing_class=tokenizer,
                            fusion_args=FusionArguments(fusion="mince", loss_type="kl", lam=0.9))
    trainer.train()

With a plain ``transformers.Trainer`` use :class:`fusekernels.integration.FusionLossFunction` as
``compute_loss_func`` instead (full logits, ``fusion_positions="labels"``).
"""
from __future__ import annotations

import copy
import inspect
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from transformers import Trainer
from transformers.trainer_utils import unwrap_peft_model

from ..loss.functional import fusion_loss
from ..loss.registry import BACKENDS, FUSION_RULES, LOSS_TYPES, PRECISIONS
from .collator import CHUNK_COLUMNS, METRIC_LEVELS, ROW_KEY, TEACHER_COLUMNS, TOKEN_METRIC_COLUMN, FusionDataCollator
from .fused_forward import install_fused_forward
from .metrics import ComponentMeter
from .schedules import LAM_SCHEDULES, check_lam, lam_at_step

FUSION_POSITIONS = ("labels", "attention")
FUSED_LM_HEAD = ("auto", "always", "never")
# Config attributes that make a model's logits differ from ``lm_head(hidden)``.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_logits_scale")


@dataclass
class FusionArguments:
    """Fusion options of :class:`FusionTrainer` (parsable with ``HfArgumentParser``)."""

    num_teachers: int | None = field(default=None, metadata={"help": "Teachers per example (checked); None = any."})
    fusion: str = field(default="mince", metadata={"help": "Fusion rule: " + FUSION_RULES.help() + "."})
    metric_level: str = field(default="sequence", metadata={
        "help": "sequence | token: granularity of the teachers' metric (token: per position, e.g. MinCE picks a "
                "teacher per token; reads the pipeline's teacher_token_ce column when present)."})
    loss_type: str = field(default="kl", metadata={"help": "Fusion term: " + LOSS_TYPES.help() + "."})
    temperature: float = field(default=1.0, metadata={"help": "Teacher temperature."})
    alm_temperature: float = field(default=1.0, metadata={
        "help": "loss_type=alm: temperature of the chunk likelihoods (binary KL of exp(logp / tau))."})
    lam: float = field(default=0.9, metadata={"help": "Weight of the CLM term (published 0.9)."})
    lam_schedule: str = field(default="hard", metadata={
        "help": "hard (constant) | hard_and_decay (lam -> 1) | soft (per sample: lam = 1 - best reward exp(-ce))."})
    fusion_positions: str = field(default="labels", metadata={
        "help": "labels: fusion on rows with a CLM label | attention: every attended row (published)."})
    fused_lm_head: str = field(default="auto", metadata={
        "help": "auto | always | never: loss from hidden states in chunks instead of full logits."})
    chunk_rows: int | None = field(default=None, metadata={"help": "Rows per chunk of the fused LM-head loss."})
    backend: str = field(default="auto", metadata={"help": BACKENDS.help() + "."})
    log_components: bool = field(default=True, metadata={"help": "Log clm_loss / fusion_loss / lam."})
    precision: str = field(default="fp32", metadata={
        "help": PRECISIONS.help() + ": published = MinCE / AvgCE weights, soft lam and targets rounded as the "
                "published code."})
    base_teacher: bool = field(default=True, metadata={
        "help": "Teacher 0 is the base model's own distribution (published precision: tie rule)."})

    def __post_init__(self):
        for name, allowed in (("fusion", FUSION_RULES.names()), ("metric_level", METRIC_LEVELS),
                              ("loss_type", LOSS_TYPES.names()), ("lam_schedule", LAM_SCHEDULES),
                              ("fusion_positions", FUSION_POSITIONS), ("fused_lm_head", FUSED_LM_HEAD),
                              ("backend", BACKENDS.names()), ("precision", PRECISIONS.names())):
            if getattr(self, name) not in allowed:
                raise ValueError(f"FusionArguments.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if "teacher_weights" in FUSION_RULES[self.fusion].needs:
            raise ValueError(f"FusionArguments.fusion={self.fusion!r} reads explicit per-row teacher_weights, which "
                             "training batches do not carry; use a rule that reads teacher_ce "
                             f"{tuple(n for n, r in FUSION_RULES.items() if 'teacher_weights' not in r.needs)}")
        self.lam = check_lam(self.lam, "FusionArguments.lam")
        if not self.temperature > 0:
            raise ValueError(f"FusionArguments.temperature must be > 0, got {self.temperature}")
        if not self.alm_temperature > 0:
            raise ValueError(f"FusionArguments.alm_temperature must be > 0, got {self.alm_temperature}")
        if self.num_teachers is not None and self.num_teachers < 1:
            raise ValueError(f"FusionArguments.num_teachers must be >= 1, got {self.num_teachers}")
        if self.chunk_rows is not None and self.chunk_rows < 1:
            raise ValueError(f"FusionArguments.chunk_rows must be >= 1, got {self.chunk_rows}")


class NonFiniteLossError(ValueError):
    """Training cannot go on: a loss or a model weight is NaN / inf (the message names the step,
    the loss terms and the cause)."""


def first_nonfinite_weight(model: nn.Module) -> str | None:
    """The name of the first parameter holding NaN or inf (this process's shard for sharded
    parameters), or None."""
    for name, param in model.named_parameters():
        tensor = param.detach()
        tensor = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        if tensor.numel() and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


class _RowNumbered(torch.utils.data.Dataset):
    """A map-style dataset whose rows also carry their row number (``collator.ROW_KEY``), for the
    data loader only: samplers see the dataset itself (:func:`_unwrapped`)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        row = self.dataset[index]
        return {**row, ROW_KEY: int(index)} if isinstance(row, dict) else row

    def __getitems__(self, indices):
        rows = self.dataset.__getitems__(indices)
        return [{**row, ROW_KEY: int(i)} if isinstance(row, dict) else row for row, i in zip(rows, indices)]

    def __getattr__(self, name):  # column_names, features, ... of the dataset
        if name.startswith("__") or name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def _unwrapped(dataset):
    return dataset.dataset if isinstance(dataset, _RowNumbered) else dataset


def _has_label_tokens(dataset) -> bool:
    """Whether a ``labels`` column holds any value other than -100 (read as Arrow, stops at the
    first batch that has one; True for datasets that are not ``datasets.Dataset``)."""
    try:
        import datasets
        import pyarrow.compute as pc
    except ImportError:
        return True
    if not isinstance(dataset, datasets.Dataset):
        return True
    for batch in dataset.select_columns(["labels"]).with_format("arrow").iter(batch_size=8192):
        values = pc.list_flatten(batch.column("labels"))
        if len(values) and pc.any(pc.not_equal(values, -100)).as_py():
            return True
    return False


def shift_labels(labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """[..., T] labels -> [..., T] next-token labels: row t gets ``labels[t + 1]``, the last row
    ``ignore_index`` (the causal-LM shift of Hugging Face's loss, without slicing the logits)."""
    pad = torch.full_like(labels[..., :1], ignore_index)
    return torch.cat([labels[..., 1:], pad], dim=-1)


def _fusion_rows_mask(config: FusionArguments, labels: torch.Tensor, attention_mask):
    """Rows [..., T] where the fusion term counts, or None for "rows with a CLM label"."""
    if config.fusion_positions == "labels":
        return None
    if attention_mask is None:  # packed (padding-free) batches: every position is a real token
        return torch.ones(labels.shape, dtype=torch.bool, device=labels.device)
    return attention_mask != 0


def fusion_compute_loss(outputs, labels, num_items_in_batch=None, *, teacher_ids, teacher_logits,
                        teacher_ce=None, attention_mask=None, num_fusion_items=None, teacher_chunk_span=None,
                        teacher_chunk_logprob=None,
                        config: FusionArguments | None = None, lam: float | None = None,
                        return_components: bool = False):
    """Fusion loss of a causal-LM output, with ``Trainer.compute_loss_func``'s calling convention.

    Args:
        outputs: model output with ``logits`` [B, T, V] (any float dtype; never copied to fp32).
        labels: [B, T] int64 unshifted labels (-100 = ignored), as in the collator's batch.
        num_items_in_batch: label tokens (after the shift) of the whole accumulated batch, as
            the Trainer passes it; None = this batch's count.
        teacher_ids: the collator's int32 [B, T, n, k] teacher top-k ids.
        teacher_logits: the collator's float [B, T, n, k] teacher top-k logits.
        teacher_ce: the collator's float [B, T, n] teacher CE metric.
        teacher_chunk_span, teacher_chunk_logprob: the collator's [B, T, n] aligned chunks
            (``loss_type="alm"``, collator built with ``chunks=True``).
        attention_mask: the collator's [B, T] mask (or None).
        num_fusion_items: denominator of the fusion term for ``fusion_positions="attention"``
            (attended tokens of the accumulated batch); None = this batch's count.
        config: :class:`FusionArguments` (default values when None); ``lam`` overrides its lam
            (e.g. the scheduled value).

    Returns the 0-d loss, or ``FusionLossOutput`` with ``return_components``. A plain
    ``Trainer`` passes only (outputs, labels, num_items_in_batch) to ``compute_loss_func``, so
    the teacher tensors are bound by :class:`FusionTrainer`, which pops them from the batch, or,
    with a plain ``Trainer``, by :class:`fusekernels.integration.FusionLossFunction`.
    """
    config = config or FusionArguments()
    logits = outputs.get("logits") if isinstance(outputs, dict) else getattr(outputs, "logits", None)
    if logits is None:
        raise ValueError("outputs has no 'logits'; fusion_compute_loss needs the model's logits [B, T, V]")
    if labels is None:
        raise ValueError("labels is None: fusion training needs labels (the collator always provides them)")
    return fusion_loss(
        logits, shift_labels(labels), teacher_ids, teacher_logits, teacher_ce=teacher_ce,
        fusion=config.fusion, loss_type=config.loss_type, temperature=config.temperature,
        lam=lam if lam is not None else "soft" if config.lam_schedule == "soft" else config.lam,
        fusion_mask=_fusion_rows_mask(config, labels, attention_mask),
        reduction="mean", num_items_in_batch=num_items_in_batch, num_fusion_items=num_fusion_items,
        backend=config.backend, return_components=return_components, precision=config.precision,
        base_teacher=config.base_teacher, teacher_chunk_span=teacher_chunk_span,
        teacher_chunk_logprob=teacher_chunk_logprob, alm_temperature=config.alm_temperature)


def fused_head_supported(model: nn.Module) -> tuple[bool, str]:
    """Whether the chunked hidden-state loss reproduces ``model``'s logits, and why not."""
    head = getattr(model, "lm_head", None)
    config = getattr(model, "config", None)
    if type(head) is not nn.Linear:
        return False, "the model has no plain nn.Linear lm_head"
    if getattr(config, "is_encoder_decoder", False):
        return False, "encoder-decoder models are not supported"
    for name in _LOGIT_TRANSFORMS:
        if getattr(config, name, None) not in (None, 1, 1.0):
            return False, f"the model transforms its logits (config.{name})"
    return True, ""


class FusionTrainer(Trainer):
    """``Trainer`` that optimises ``lam * CLM + (1 - lam) * fusion`` on sparse teacher targets.

    Takes every ``Trainer`` argument plus ``fusion_args`` (:class:`FusionArguments`). Without a
    ``data_collator`` it builds a :class:`FusionDataCollator` (pad id from the processing class).
    Datasets are checked at construction (teacher columns present, first examples collate), so
    bad data fails before training starts (a training set whose ``labels`` are all -100 too).
    Logs ``clm_loss``, ``fusion_loss`` and ``lam`` next to ``loss`` (``fusion_args.log_components``).

    Training stops with :class:`NonFiniteLossError` (a ``ValueError`` naming the step and the cause)
    as soon as a training loss is NaN or inf, or before it starts when a model weight is: the
    Trainer's own ``logging_nan_inf_filter`` would otherwise log loss 0 and save a broken model.
    ``train(resume_from_checkpoint=True)`` resumes from the newest *complete* checkpoint (see
    :func:`fusekernels.integration.checkpoints.last_complete_checkpoint`).
    """

    # compute_loss divides by the counts of the whole accumulated batch itself.
    loss_is_scaled_for_ga = True

    def __init__(self, model=None, args=None, data_collator=None, train_dataset=None, eval_dataset=None,
                 processing_class=None, *, fusion_args: FusionArguments | None = None, **kwargs):
        if kwargs.get("compute_loss_func") is not None:
            raise ValueError("FusionTrainer computes the fusion loss itself; do not pass compute_loss_func")
        self.fusion_args = fusion_args if fusion_args is not None else FusionArguments()
        if not isinstance(self.fusion_args, FusionArguments):
            raise TypeError(f"fusion_args must be a FusionArguments, got {type(self.fusion_args).__name__}")
        if data_collator is None:
            pad = getattr(processing_class, "pad_token_id", None)
            vocab = getattr(getattr(model, "config", None), "vocab_size", None)  # ids are range-checked
            data_collator = FusionDataCollator(pad_token_id=pad if pad is not None else 0,
                                               num_teachers=self.fusion_args.num_teachers,
                                               vocab_size=vocab if isinstance(vocab, int) else None,
                                               metric_level=self.fusion_args.metric_level, allow_plain=True,
                                               chunks=LOSS_TYPES[self.fusion_args.loss_type].needs_chunks)
        elif isinstance(data_collator, FusionDataCollator) and not data_collator.allow_plain:
            data_collator = copy.copy(data_collator)
        if isinstance(data_collator, FusionDataCollator):
            data_collator.allow_plain = True  # plain-text eval batches; training batches are checked
        # compute_loss_func is set so that Trainer counts num_items_in_batch for every model;
        # compute_loss below calls fusion_compute_loss itself with the teacher tensors bound.
        kwargs["compute_loss_func"] = fusion_compute_loss
        super().__init__(model, args, data_collator, train_dataset, eval_dataset, processing_class, **kwargs)
        if self.args.n_gpu > 1:
            raise ValueError("FusionTrainer does not support torch.nn.DataParallel (n_gpu > 1); launch one process "
                             "per device with accelerate or torchrun instead")
        self._loss_shifts_labels = True  # the count of labels[..., 1:] is the count of loss rows
        self._num_fusion_items = None
        self._meter = ComponentMeter()
        # the datasets as the Trainer holds them (a subclass such as TRL's may have prepared them)
        train_dataset, eval_dataset = self.train_dataset, self.eval_dataset
        self._check_dataset(train_dataset, "train_dataset")
        for name, dataset in (eval_dataset.items() if isinstance(eval_dataset, dict) else [("", eval_dataset)]):
            self._check_dataset(dataset, f"eval_dataset{'[' + repr(name) + ']' if name else ''}", plain_ok=True)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """``Trainer.train``, skipping incomplete checkpoints and refusing non-finite weights."""
        from .checkpoints import checkpoint_is_complete, last_complete_checkpoint

        if resume_from_checkpoint is True:
            found = last_complete_checkpoint(self.args.output_dir)
            if found is None:
                raise ValueError(f"resume_from_checkpoint=True: no complete checkpoint-* folder in "
                                 f"{self.args.output_dir}")
            resume_from_checkpoint = found
        elif isinstance(resume_from_checkpoint, str) and not checkpoint_is_complete(resume_from_checkpoint):
            raise ValueError(f"resume_from_checkpoint: {resume_from_checkpoint} is incomplete (its save was "
                             "interrupted: no readable trainer_state.json)")
        if resume_from_checkpoint is None:
            bad = first_nonfinite_weight(self.model)
            if bad is not None:
                raise NonFiniteLossError(f"model weight {bad} holds NaN or inf: every loss would be NaN; the model "
                                         "files are damaged or were saved from a diverged run")
        return super().train(resume_from_checkpoint, *args, **kwargs)

    # ------------------------------------------------------------------ data
    def _check_dataset(self, dataset, what: str, plain_ok: bool = False) -> None:
        """Fail before training on a dataset without teacher columns or with malformed examples
        (``plain_ok``: an evaluation set may have no teacher column at all)."""
        if dataset is None:
            return
        columns = getattr(dataset, "column_names", None)
        if plain_ok and columns is not None and not any(c in columns for c in TEACHER_COLUMNS):
            if "input_ids" not in columns:
                raise ValueError(f"{what} has no input_ids column")
            return
        needed = ["input_ids", "teacher_ids", "teacher_logits"]
        if not (isinstance(self.data_collator, FusionDataCollator) and not self.data_collator.require_teacher_ce):
            needed.append("teacher_ce")
        if columns is not None:
            missing = [c for c in needed if c not in columns]
            if missing:
                raise ValueError(f"{what} is missing column(s) {missing} needed for fusion training "
                                 "(see fusekernels.integration.collator for the format)")
        if isinstance(self.data_collator, FusionDataCollator) and hasattr(dataset, "__getitem__"):
            try:
                size = len(dataset)
            except TypeError:
                return
            if size == 0:
                raise ValueError(f"{what} is empty")
            try:
                self.data_collator([dataset[i] for i in range(min(size, 2))])
            except (ValueError, TypeError, KeyError) as err:
                raise type(err)(f"{what}: {err}") from err
        if not plain_ok and columns is not None and "labels" in columns and not _has_label_tokens(dataset):
            message = (f"{what} has no label tokens (every labels value is -100): the CLM term has nothing to learn "
                       "from; chat data gets labels on assistant turns only: are they missing or all truncated "
                       "away?")
            if self.fusion_args.fusion_positions == "labels":
                raise ValueError(message + " The fusion term covers the same positions "
                                 "(fusion_positions='labels'): every step would train on nothing at loss 0")
            import warnings

            warnings.warn(f"fusekernels: {message} Only the fusion term trains (fusion_positions='attention').",
                          stacklevel=3)

    def _remove_unused_columns(self, dataset, description=None):
        """The Trainer's column removal; with a :class:`FusionDataCollator`, rows also carry their
        row number, so that a malformed example is named by its dataset row, not its batch slot."""
        dataset = super()._remove_unused_columns(dataset, description=description)
        if isinstance(self.data_collator, FusionDataCollator) and hasattr(dataset, "__getitems__"):
            return _RowNumbered(dataset)
        return dataset

    def _get_train_sampler(self, train_dataset=None):
        return super()._get_train_sampler(_unwrapped(train_dataset))

    def _get_eval_sampler(self, eval_dataset):
        return super()._get_eval_sampler(_unwrapped(eval_dataset))

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        for column in (*TEACHER_COLUMNS, *CHUNK_COLUMNS, TOKEN_METRIC_COLUMN, "position_ids"):
            if column not in self._signature_columns:
                self._signature_columns.append(column)

    def _get_num_items_in_batch(self, batch_samples, device):
        """Label count (Hugging Face's rule) and, for ``fusion_positions="attention"``, the count of
        attended tokens of the same accumulated batch, gathered across processes the same way."""
        num_items = super()._get_num_items_in_batch(batch_samples, device)
        self._num_fusion_items = None
        if self.fusion_args.fusion_positions == "attention" and batch_samples:
            count = sum(int(b["attention_mask"].sum()) if b.get("attention_mask") is not None
                        else b["labels"].numel() for b in batch_samples)
            count = torch.tensor(count, device=device)
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                count = self.accelerator.gather(count).sum()
            self._num_fusion_items = count
        return num_items

    # ------------------------------------------------------------------ loss
    def current_lam(self) -> float:
        """lam of the current optimizer step under ``fusion_args.lam_schedule``."""
        max_steps = max(self.state.max_steps, 1)
        return lam_at_step(self.fusion_args.lam_schedule, self.fusion_args.lam, self.state.global_step, max_steps)

    def _core_model(self, model) -> nn.Module:
        """The plain transformers model under DDP / PEFT wrappers."""
        return unwrap_peft_model(self.accelerator.unwrap_model(model))

    def _use_fused_head(self, model) -> bool:
        mode = self.fusion_args.fused_lm_head
        if mode == "never":
            return False
        ok, why = fused_head_supported(self._core_model(model))
        if ok and self.is_deepspeed_enabled and getattr(self.accelerator.state.deepspeed_plugin, "zero_stage", 0) == 3:
            # ZeRO-3 frees the lm_head weight right after the lm_head call
            ok, why = False, "DeepSpeed ZeRO-3 releases the lm_head weight after its own call"
        if mode == "always" and not ok:
            raise ValueError(f"fused_lm_head='always' but {why}")
        return ok

    @staticmethod
    def _accepts_argument(model, name: str) -> bool:
        params = inspect.signature(model.forward).parameters.values()
        return any(p.name == name or p.kind == inspect.Parameter.VAR_KEYWORD for p in params)

    def _aux_loss(self, core, outputs, accumulated: bool):
        """The MoE router load-balancing term the model adds to its own loss (``output_router_logits``),
        averaged over the accumulation steps (``accumulated``: the loss is normalised by the
        accumulated batch, so the Trainer does not divide it); None for other models."""
        aux = outputs.get("aux_loss") if isinstance(outputs, dict) else getattr(outputs, "aux_loss", None)
        coef = getattr(getattr(core, "config", None), "router_aux_loss_coef", None)
        if not isinstance(aux, torch.Tensor) or not coef:
            return None
        steps = getattr(self, "current_gradient_accumulation_steps", 1) if accumulated else 1
        return coef * aux / steps

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Pops labels and teacher tensors from ``inputs``, runs the model and returns the fusion
        loss normalised by the whole accumulated batch (see the module docstring). A batch without
        teacher columns (held-out plain text) gets the causal-LM loss, in evaluation only."""
        inputs = dict(inputs)
        if inputs.get("labels") is None:
            raise ValueError("the batch has no labels: FusionTrainer needs batches from FusionDataCollator")
        labels = inputs.pop("labels")
        teacher = {name: inputs.pop(name) for name in (*TEACHER_COLUMNS, *CHUNK_COLUMNS) if name in inputs}
        core = self._core_model(model)
        if self._accepts_argument(core, "use_cache"):
            inputs.setdefault("use_cache", False)  # no KV cache in training (packing detection needs none)
        if getattr(core.config, "output_router_logits", False) and self._accepts_argument(core, "output_router_logits"):
            inputs.setdefault("output_router_logits", True)  # MoE: the model returns its aux_loss
        if not teacher:
            if model.training:
                raise ValueError("the batch has no teacher columns (teacher_ids, teacher_logits): FusionTrainer "
                                 "trains on batches from FusionDataCollator; plain text is for evaluation only")
            loss, outputs = self._clm_eval_loss(model, inputs, labels)
            return (loss, outputs) if return_outputs else loss
        missing = [c for c in ("teacher_ids", "teacher_logits") if c not in teacher]
        if missing:
            raise ValueError(f"the batch has no {missing}: FusionTrainer needs batches from FusionDataCollator")
        if LOSS_TYPES[self.fusion_args.loss_type].needs_chunks and any(c not in teacher for c in CHUNK_COLUMNS):
            raise ValueError(f"loss_type={self.fusion_args.loss_type!r} needs the batch columns {list(CHUNK_COLUMNS)}: "
                             "build the FusionDataCollator with chunks=True")
        config, lam = self.fusion_args, self.current_lam()
        attention_mask = inputs.get("attention_mask")
        num_fusion = self._num_fusion_items if config.fusion_positions == "attention" else None
        want_components = (config.log_components and model.training) or not model.training
        if not model.training:
            num_items_in_batch = num_fusion = None  # per-batch means; eval_clm_loss is token-weighted

        if not return_outputs:
            fused_forward = install_fused_forward(core)
            spec = dict(fused=self._use_fused_head(model), fusion=config.fusion, loss_type=config.loss_type,
                        temperature=config.temperature, lam=lam, backend=config.backend,
                        chunk_rows=config.chunk_rows, components=want_components, precision=config.precision,
                        base_teacher=config.base_teacher, alm_temperature=config.alm_temperature)
            targets = dict(spec=spec, labels=shift_labels(labels), teacher_ids=teacher["teacher_ids"],
                           teacher_logits=teacher["teacher_logits"], teacher_ce=teacher.get("teacher_ce"),
                           teacher_chunk_span=teacher.get("teacher_chunk_span"),
                           teacher_chunk_logprob=teacher.get("teacher_chunk_logprob"),
                           fusion_mask=_fusion_rows_mask(config, labels, attention_mask),
                           num_items_in_batch=num_items_in_batch, num_fusion_items=num_fusion)
            outputs = model(**inputs, fusion_targets=targets)
            loss = outputs["loss"]
            clm, fusion = fused_forward.last_components if want_components else (None, None)
        else:
            outputs = model(**inputs)
            result = fusion_compute_loss(outputs, labels, num_items_in_batch, **teacher,
                                         attention_mask=attention_mask, num_fusion_items=num_fusion,
                                         config=config, lam=lam, return_components=want_components)
            loss, clm, fusion = (result.loss, result.clm_loss, result.fusion_loss) if want_components else \
                (result, None, None)
        aux = self._aux_loss(core, outputs, num_items_in_batch is not None)
        if model.training:
            from .._interrupt import check_interrupted

            check_interrupted()  # a Ctrl-C swallowed by a finaliser stops training here
            if not bool(torch.isfinite(loss.detach()).all()):  # (the Trainer syncs on the loss anyway)
                self._stop_nonfinite(model, loss, clm, fusion)

        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # The denominators count every process's tokens while DDP averages the gradients.
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        if aux is not None:
            loss = loss + aux
        if model.training and want_components:
            self._record_components(clm, fusion, lam, aux)
        elif not model.training:
            self._record_eval_clm(clm, labels)
        return (loss, outputs) if return_outputs else loss

    def _stop_nonfinite(self, model, loss, clm, fusion):
        """Raise :class:`NonFiniteLossError` naming the step, the loss terms and the likely cause."""
        def value(t):
            return "n/a" if t is None else f"{float(t.detach().float().mean()):.4g}"

        bad = first_nonfinite_weight(self._core_model(model))
        cause = (f"model weight {bad} holds NaN or inf" if bad is not None else
                 "the model's outputs are not finite although its weights are (an overflow: try float32 / bf16, a "
                 "lower learning rate or gradient clipping)")
        raise NonFiniteLossError(f"training stopped at step {self.state.global_step + 1}: the loss is {value(loss)} "
                                 f"(clm_loss {value(clm)}, fusion_loss {value(fusion)}); {cause}")

    def _clm_eval_loss(self, model, inputs, labels):
        """Causal-LM loss of a plain batch (mean over its label tokens, fp32)."""
        outputs = model(**inputs)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        target = shift_labels(labels)
        count = (target != -100).sum()
        total = nn.functional.cross_entropy(logits.flatten(0, -2).float(), target.flatten(), ignore_index=-100,
                                            reduction="sum")
        loss = total / count.clamp_min(1)
        self._record_eval_clm(loss, labels)
        return loss, outputs

    # ------------------------------------------------------------------ logging
    def _record_components(self, clm, fusion, lam, aux):
        scale = self.accelerator.num_processes // self.get_tp_size() if self.args.average_tokens_across_devices else 1
        self._meter.add_train(clm, fusion, lam, aux, scale, step=self.state.global_step)

    def _record_eval_clm(self, clm, labels):
        if clm is not None:
            self._meter.add_eval(clm, shift_labels(labels))

    def _reduce(self, tensor, reduction):
        tensor = tensor.to(self.args.device)
        return self.accelerator.reduce(tensor, reduction=reduction) if self.args.world_size > 1 else tensor

    def log(self, logs, *args, **kwargs):
        if "loss" in logs:
            logs.update(self._meter.train_logs(self.state.global_step, self._reduce))
        super().log(logs, *args, **kwargs)

    def evaluation_loop(self, *args, **kwargs):
        """Adds ``eval_clm_loss`` (token-weighted causal-LM loss) and ``eval_perplexity`` to the
        metrics, for evaluation sets with or without teacher columns."""
        self._meter.reset_eval()
        output = super().evaluation_loop(*args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
        output.metrics.update(self._meter.eval_logs(prefix, self._reduce))
        return output

    def fusion_config(self) -> dict:
        """The fusion options as a plain dict (for experiment tracking)."""
        return asdict(self.fusion_args)
