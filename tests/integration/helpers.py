"""Tiny models and synthetic fusion data for the integration tests (CPU, a few ms per step)."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from transformers import TrainerCallback

VOCAB = 512


def tiny_llama(vocab=VOCAB, hidden=32, layers=2, seed=0, tie=False, dtype=torch.float32):
    """A randomly initialised 2-layer Llama (about 50k parameters) built from a config."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=tie, pad_token_id=0)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(dtype)


def synthetic_examples(n, vocab=VOCAB, n_teachers=2, k=4, lengths=(6, 14), seed=0, per_token_ce=False,
                       exact_lengths=None):
    """``n`` learnable examples in the collator's column format.

    Each sequence is an arithmetic progression modulo ``vocab`` (learnable next-token rule);
    teacher t's top-k at position i puts the true next token first and k - 1 random ids after
    it, with some positions truncated by -inf padding. Lengths vary (uniform in ``lengths``, or
    ``exact_lengths[i]``) so batches need padding.
    """
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(n):
        length = int(rng.integers(lengths[0], lengths[1] + 1))
        if exact_lengths is not None:
            length = exact_lengths[len(examples)]
        start, step = int(rng.integers(vocab)), int(rng.integers(1, 4))
        ids = (start + step * np.arange(length + 1)) % vocab
        teacher_ids = rng.integers(0, vocab, size=(length, n_teachers, k)).astype(np.int32)
        teacher_ids[:, :, 0] = ids[1:, None]
        logits = rng.normal(size=(length, n_teachers, k)).astype(np.float32)
        logits[:, :, 0] += 4.0
        short = rng.random((length, n_teachers)) < 0.3
        logits[short, k // 2:] = -np.inf
        ce_shape = (length, n_teachers) if per_token_ce else (n_teachers,)
        examples.append({
            "input_ids": ids[:length].tolist(),
            "teacher_ids": teacher_ids,
            "teacher_logits": logits.astype(np.float16),
            "teacher_ce": rng.uniform(0.5, 3.0, size=ce_shape).astype(np.float32),
        })
    return examples


class GradCapture(TrainerCallback):
    """Keeps a float64 copy of every parameter gradient before the first optimizer step (use
    ``max_grad_norm=0`` so that no clipping alters them)."""

    def __init__(self):
        self.grads = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.grads is None:
            self.grads = {name: p.grad.detach().double().clone()
                          for name, p in model.named_parameters() if p.grad is not None}


def training_args(out_dir, **overrides):
    """TrainingArguments for fast, deterministic CPU test runs."""
    from transformers import TrainingArguments

    values = dict(output_dir=str(out_dir), per_device_train_batch_size=4, max_steps=1, learning_rate=1e-3,
                  max_grad_norm=0.0, report_to=[], save_strategy="no", logging_steps=1, use_cpu=True,
                  disable_tqdm=True, dataloader_num_workers=0, seed=0, remove_unused_columns=False)
    values.update(overrides)
    return TrainingArguments(**values)
