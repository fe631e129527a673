"""One FusionTrainer step on 4 examples; rank 0 saves the synchronised gradients.

Run by test_trainer.py under ``accelerate launch --multi_gpu --num_processes 2`` with
``use_cpu=True`` (gloo on CPU): each process gets 2 of the 4 examples. Arguments:
output file, fusion_positions, fused_lm_head and optionally "plain" (a plain Trainer with
FusionLossFunction instead of FusionTrainer).
"""
import sys
import tempfile

import torch
from datasets import Dataset
from transformers import Trainer

from fusekernels.integration import FusionArguments, FusionDataCollator, FusionLossFunction, FusionTrainer
from tests.integration.helpers import GradCapture, synthetic_examples, tiny_llama, training_args

DDP_LENGTHS = (4, 13, 7, 11)  # no split into two pairs has equal token counts


def run_step(per_device_batch, fusion_positions, fused_lm_head, out_dir, trainer_kind="fusion"):
    """Gradients (name -> float64 tensor) of one optimizer step over the 4 DDP examples, with
    FusionTrainer (``trainer_kind="fusion"``) or a plain Trainer with FusionLossFunction ("plain")."""
    examples = synthetic_examples(4, exact_lengths=DDP_LENGTHS, seed=3)
    args = training_args(out_dir, per_device_train_batch_size=per_device_batch)
    fusion_args = FusionArguments(fusion_positions=fusion_positions, fused_lm_head=fused_lm_head)
    model = tiny_llama(seed=1)
    if trainer_kind == "plain":
        loss_fn = FusionLossFunction(model, fusion_args)
        trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(examples),
                          data_collator=FusionDataCollator(), compute_loss_func=loss_fn, callbacks=[loss_fn])
    else:
        trainer = FusionTrainer(model=model, args=args, train_dataset=Dataset.from_list(examples),
                                fusion_args=fusion_args)
    capture = GradCapture()
    trainer.add_callback(capture)
    trainer.train()
    return trainer, capture.grads


if __name__ == "__main__":
    output, positions, fused = sys.argv[1:4]
    kind = sys.argv[4] if len(sys.argv) > 4 else "fusion"
    with tempfile.TemporaryDirectory() as tmp:
        trainer, grads = run_step(2, positions, fused, tmp, kind)
        if trainer.args.world_size != 2:
            raise SystemExit(f"expected 2 processes, got world_size={trainer.args.world_size}")
        if trainer.is_world_process_zero():
            torch.save(grads, output)
