"""FusionTrainer steps on a 135M-class Llama (SmolLM2-135M's shape, built from a config, random
weights) in bf16: fused LM head vs full logits vs plain CLM ``Trainer``, same batch.

Run by ``benchmarks/gpu_check.sh``; by hand: ``python benchmarks/gpu_trainer_step.py``
(``--device cpu --tiny`` runs a small model on the CPU, as the test suite does).
Prints one line per variant (median step time over the timed steps, tokens/s, peak GPU memory)
and a JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, tie_word_embeddings=True)


def _examples(n, length, vocab, teachers, k, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        out.append({"input_ids": rng.integers(0, vocab, size=length),
                    "teacher_ids": rng.integers(0, vocab, size=(length, teachers, k)).astype(np.int32),
                    "teacher_logits": (np.sort(rng.normal(size=(length, teachers, k)), -1)[..., ::-1] * 3
                                       ).astype(np.float16),
                    "teacher_ce": rng.uniform(0.5, 3, size=teachers).astype(np.float32)})
    return out


def _clm_collator(features):
    ids = torch.as_tensor(np.stack([f["input_ids"] for f in features]), dtype=torch.long)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda or cpu")
    p.add_argument("--tiny", action="store_true", help="a 2-layer model instead of the 135M shape")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant (after one warm-up step)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_trainer_step: no CUDA device", file=sys.stderr)
        return 3
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    from fusekernels.integration import FusionArguments, FusionDataCollator, FusionTrainer

    shape = TINY if args.tiny else SMOLLM2_135M
    config = LlamaConfig(**shape, max_position_embeddings=max(2048, args.length))
    config._attn_implementation = "sdpa"
    bf16 = args.device == "cuda"

    def model():
        torch.manual_seed(0)
        m = LlamaForCausalLM(config)
        return m.to(torch.bfloat16) if bf16 else m

    examples = _examples(args.batch, args.length, shape["vocab_size"], teachers=2, k=10)
    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(output_dir=out, per_device_train_batch_size=args.batch, learning_rate=1e-4,
                                  report_to=[], save_strategy="no", use_cpu=args.device == "cpu", disable_tqdm=True,
                                  remove_unused_columns=False, seed=0, bf16=bf16)
        variants = {
            "fusion, fused LM head": (FusionTrainer(model=model(), args=targs, fusion_args=FusionArguments(
                fused_lm_head="always", log_components=False)), FusionDataCollator()),
            "fusion, full logits": (FusionTrainer(model=model(), args=targs, fusion_args=FusionArguments(
                fused_lm_head="never", log_components=False)), FusionDataCollator()),
            "plain CLM Trainer": (Trainer(model=model(), args=targs, data_collator=_clm_collator), _clm_collator),
        }
        results = {}
        for name, (trainer, collator) in variants.items():
            trainer.create_optimizer_and_scheduler(num_training_steps=args.steps + 1)
            trainer.state.max_steps = args.steps + 1
            trainer.current_gradient_accumulation_steps = 1
            if args.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            times, loss = [], None
            for step in range(args.steps + 1):
                if args.device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                batch = collator(examples)
                num_items = trainer._get_num_items_in_batch([batch], trainer.args.device)
                loss = trainer.training_step(trainer.model, batch, num_items)
                trainer.optimizer.step()
                trainer.optimizer.zero_grad(set_to_none=True)
                if args.device == "cuda":
                    torch.cuda.synchronize()
                if step:
                    times.append(time.perf_counter() - start)
            loss = float(loss)
            if not np.isfinite(loss):
                print(f"gpu_trainer_step: {name}: non-finite loss {loss}", file=sys.stderr)
                return 1
            peak = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else None
            step_s = float(np.median(times))
            results[name] = {"step_ms": round(step_s * 1e3, 2),
                             "tokens_per_s": round(args.batch * args.length / step_s),
                             "peak_gib": None if peak is None else round(peak, 3), "loss": round(loss, 4)}
            del trainer
            if args.device == "cuda":
                torch.cuda.empty_cache()
    with torch.device("meta"):
        params = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    shape = "tiny" if args.tiny else "SmolLM2-135M shape"
    print(f"[{device}] FusionTrainer step, Llama {params / 1e6:.0f}M params ({shape}), "
          f"{'bf16' if bf16 else 'fp32'}, batch {args.batch} x {args.length} tokens, 2 teachers, k=10, AdamW")
    for name, r in results.items():
        print(f"  {name:24s}: {r['step_ms']:9.2f} ms/step  {r['tokens_per_s'] / 1e3:9.1f} k tokens/s  "
              f"peak {r['peak_gib'] if r['peak_gib'] is not None else '-'} GiB  loss {r['loss']}")
    print(json.dumps({"device": device, **results}))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
