"""TRL integration: :class:`FusionSFTTrainer`, TRL's ``SFTTrainer`` with the fusion loss.

TRL's ``SFTTrainer`` with a ``compute_loss_func`` runs the model twice per step (once for the
custom loss, once for its own metrics) and warns that the route is deprecated. This class
instead replaces ``compute_loss`` by :class:`FusionTrainer`'s: one forward per micro-batch, the
fused LM head, exact gradient accumulation, the MoE router loss (TRL's ``router_aux_loss_coef``),
and the logs ``clm_loss`` / ``fusion_loss`` / ``lam`` next to ``loss`` (plus ``eval_clm_loss`` /
``eval_perplexity`` in evaluation). Everything else is TRL's: ``SFTConfig`` (a
``TrainingArguments``), model loading from a name, PEFT, callbacks, the model card.

Datasets with teacher columns (the pipeline's output, optionally with a ``labels`` column, e.g.
completion-only labels of chat data) are used as they are: TRL's own preparation (tokenization,
truncation, packing) would cut ``input_ids`` without the teacher columns, so it is skipped for
them. An evaluation set without teacher columns (text or chat) goes through TRL's preparation as
usual and is evaluated with the causal-LM loss.

Usage::

    from trl import SFTConfig
    from fusekernels.integration import FusionArguments
    from fusekernels.integration.trl import FusionSFTTrainer

    trainer = FusionSFTTrainer(model=model, args=SFTConfig("out"), train_dataset=packed,
                               processing_class=tokenizer, fusion_args=FusionArguments(lam=0.9))
    trainer.train()
"""
from __future__ import annotations

from .._optional import require
from .collator import TEACHER_COLUMNS
from .trainer import FusionTrainer

require("trl", "fusekernels.integration.trl")
from trl import SFTTrainer  # noqa: E402


def _has_teacher_columns(dataset) -> bool:
    columns = getattr(dataset, "column_names", None) or []
    return any(c in columns for c in TEACHER_COLUMNS)


class FusionSFTTrainer(FusionTrainer, SFTTrainer):
    """TRL ``SFTTrainer`` optimising ``lam * CLM + (1 - lam) * fusion`` (see the module docstring).

    Takes ``SFTTrainer``'s arguments (``args`` an ``SFTConfig``) plus ``fusion_args``
    (:class:`FusionArguments`). Without a ``data_collator`` a :class:`FusionDataCollator` is built
    (pad id: the tokenizer's pad or EOS token).
    """

    _tag_names = ["trl", "sft", "fusekernels", "knowledge-fusion"]

    def __init__(self, model=None, args=None, data_collator=None, train_dataset=None, eval_dataset=None,
                 processing_class=None, *, fusion_args=None, **kwargs):
        if data_collator is None and processing_class is not None and getattr(processing_class, "pad_token_id",
                                                                                 None) is None:
            from .collator import FusionDataCollator

            eos = getattr(processing_class, "eos_token_id", None)
            data_collator = FusionDataCollator(pad_token_id=eos if eos is not None else 0, allow_plain=True)
        super().__init__(model, args, data_collator, train_dataset, eval_dataset, processing_class,
                         fusion_args=fusion_args, **kwargs)

    def _prepare_dataset(self, dataset, *args, **kwargs):
        if _has_teacher_columns(dataset):
            return dataset  # already tokenized and packed by the pipeline; TRL would cut input_ids alone
        return super()._prepare_dataset(dataset, *args, **kwargs)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if "attention_mask" not in self._signature_columns:
            self._signature_columns.append("attention_mask")
