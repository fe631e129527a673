"""Fuse two teachers with different tokenizers into a student with a third one, then train it with
FusionTrainer: texts -> build_fusion_dataset -> FusionTrainer (MinCE per token, then likelihood
matching of aligned chunks).

Runs on a CPU in about a minute with tiny random models standing in for real ones (a loaded
model, a folder, a .gguf file, a Hub id or a packaged name such as "smollm2" all work as teachers).

    python examples/fusion_trainer.py
"""
import tempfile

import torch
from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

from fusekernels.integration import FusionArguments, FusionTrainer
from fusekernels.pipeline import build_fusion_dataset
from fusekernels.tokenization.assets import kjv_verses, load_tokenizer


def tiny_llama(vocab_size: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2))


def main() -> None:
    student_tok = load_tokenizer("mistral-v1")                        # SentencePiece, 32,000 tokens
    teachers = [(tiny_llama(len(tok), seed), tok) for seed, tok in
                enumerate([load_tokenizer("gpt2"), load_tokenizer("qwen")], start=1)]   # byte-level BPE
    texts = [" ".join(pair) for pair in zip(*[iter(kjv_verses(96))] * 2)]
    data, report = build_fusion_dataset(texts, student_tok, teachers, block_size=64, split_margin=16, k=8,
                                        cache=False, return_report=True)
    print("columns:", data.column_names)
    print("coverage per teacher:", [round(t["coverage"], 3) for t in report.teachers])

    for fusion_args in (FusionArguments(fusion="mince", metric_level="token", lam=0.9),   # a teacher per token
                        FusionArguments(loss_type="alm", metric_level="token", lam=0.5)):  # no vocabulary map
        trainer = FusionTrainer(model=tiny_llama(len(student_tok), 0),
                                args=TrainingArguments(tempfile.mkdtemp(), max_steps=3, per_device_train_batch_size=2,
                                                       logging_steps=1, report_to="none", save_strategy="no"),
                                train_dataset=data, processing_class=student_tok, fusion_args=fusion_args)
        result = trainer.train()
        print(f"{fusion_args.loss_type} / {fusion_args.fusion} per {fusion_args.metric_level}: "
              f"training loss {result.training_loss:.3f}")


if __name__ == "__main__":
    main()
