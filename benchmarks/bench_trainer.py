"""Trainer integration benchmark (CPU): step time and loss-path peak memory, one run.

1. Trainer step time on the same randomly initialised Llama (V = 32000, hidden 256, 2 layers,
   4 x 256 tokens per step, AdamW): collate + ``Trainer.training_step`` + optimizer step, the
   three variants interleaved step by step (fair under a fluctuating load), median per variant:
   (a) plain CLM: ``transformers.Trainer``, the model's own cross-entropy (baseline);
   (b) FusionTrainer, fused LM head (default: loss from hidden states in token chunks);
   (c) FusionTrainer, full logits then ``fusion_loss`` (the path of non-Llama-like models).
   Fusion: 2 teachers, top-10 sparse targets, MinCE, KL, lam = 0.9.
2. Peak extra memory (growth of the peak resident set, Linux /proc, a fresh subprocess each) of
   the loss path alone, from
   hidden states [4, 512, 256] and the LM-head weight [32000, 256] to their gradients:
   (a) published: dense bf16 [B, T, V] target per teacher (as the published collator builds
       them; scattered vectorised here since only memory is measured), MinCE selection,
       full fp32 logits, log_softmax + kl_div + cross-entropy through autograd;
   (b) full logits + ``fusion_loss`` (sparse targets);
   (c) ``fused_linear_fusion_loss`` (sparse targets, chunked logits).

Run: python -m pytest benchmarks/bench_trainer.py -q -s
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

VOCAB, HIDDEN, LAYERS, BATCH, LENGTH, TEACHERS, K = 32000, 256, 2, 4, 256, 2, 10
WARMUP_STEPS, TIMED_STEPS = 1, 6
MEM_BATCH, MEM_LENGTH = 4, 512
STEP_TIMES: dict[str, float] = {}
MEMORY: dict[str, dict] = {}


# ---------------------------------------------------------------------------------- step time
def _model():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=4 * HIDDEN,
                         num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=2 * LENGTH, tie_word_embeddings=False)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def _examples(n):
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        ids = rng.integers(0, VOCAB, size=LENGTH)
        teacher_ids = rng.integers(0, VOCAB, size=(LENGTH, TEACHERS, K)).astype(np.int32)
        logits = np.sort(rng.normal(size=(LENGTH, TEACHERS, K)), -1)[..., ::-1].astype(np.float16) * 3
        out.append({"input_ids": ids, "teacher_ids": teacher_ids, "teacher_logits": logits,
                    "teacher_ce": rng.uniform(0.5, 3, size=TEACHERS).astype(np.float32)})
    return out


def _clm_collator(features):
    """Plain CLM batch (all sequences have the same length: no padding needed)."""
    ids = torch.as_tensor(np.stack([f["input_ids"] for f in features]), dtype=torch.long)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def _trainers(out_dir):
    """The three trainers, each with its own copy of the same initial model and its optimizer."""
    from transformers import Trainer, TrainingArguments

    from fusekernels.integration import FusionArguments, FusionDataCollator, FusionTrainer

    args = TrainingArguments(output_dir=out_dir, per_device_train_batch_size=BATCH, learning_rate=1e-4, report_to=[],
                             save_strategy="no", use_cpu=True, disable_tqdm=True, remove_unused_columns=False, seed=0)
    fused, full = (FusionArguments(fused_lm_head=mode, log_components=False) for mode in ("always", "never"))
    trainers = {
        "clm": (Trainer(model=_model(), args=args, data_collator=_clm_collator), _clm_collator),
        "fusion_fused_head": (FusionTrainer(model=_model(), args=args, fusion_args=fused), FusionDataCollator()),
        "fusion_full_logits": (FusionTrainer(model=_model(), args=args, fusion_args=full), FusionDataCollator()),
    }
    for trainer, _ in trainers.values():
        trainer.create_optimizer_and_scheduler(num_training_steps=WARMUP_STEPS + TIMED_STEPS)
        trainer.state.max_steps = WARMUP_STEPS + TIMED_STEPS
        trainer.current_gradient_accumulation_steps = 1
    return trainers


def _step(trainer, collator, features):
    """One full optimizer step as Trainer.train runs it: collate, forward + loss + backward
    (Trainer.training_step with the batch's num_items_in_batch), AdamW, zero_grad."""
    batch = collator(features)
    num_items = trainer._get_num_items_in_batch([batch], trainer.args.device)
    trainer.training_step(trainer.model, batch, num_items)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)


def measure_step_times():
    """Median seconds per step of each variant; the variants run interleaved step by step so
    that load changes on a shared machine hit all of them alike."""
    examples = _examples(BATCH)
    times = {}
    with tempfile.TemporaryDirectory() as out:
        trainers = _trainers(out)
        for step in range(WARMUP_STEPS + TIMED_STEPS):
            for name, (trainer, collator) in trainers.items():
                start = time.perf_counter()
                _step(trainer, collator, examples)
                if step >= WARMUP_STEPS:
                    times.setdefault(name, []).append(time.perf_counter() - start)
    return {name: float(np.median(values)) for name, values in times.items()}


def test_step_time(benchmark):
    pytest.importorskip("transformers")
    STEP_TIMES.update(benchmark.pedantic(measure_step_times, rounds=1, iterations=1))


# ---------------------------------------------------------------------------- loss-path memory
def _memory_inputs():
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(MEM_BATCH, MEM_LENGTH, HIDDEN, generator=gen).requires_grad_()
    weight = (torch.randn(VOCAB, HIDDEN, generator=gen) * 0.05).requires_grad_()
    labels = torch.randint(0, VOCAB, (MEM_BATCH, MEM_LENGTH), generator=gen)
    labels[:, -1] = -100
    ids = torch.randint(0, VOCAB, (MEM_BATCH, MEM_LENGTH, TEACHERS, K), generator=gen, dtype=torch.int32)
    t_logits = torch.randn(MEM_BATCH, MEM_LENGTH, TEACHERS, K, generator=gen) * 3
    seq_ce = torch.rand(MEM_BATCH, 1, TEACHERS, generator=gen) * 2 + 0.5
    return hidden, weight, labels, ids, t_logits, seq_ce


def _published_loss(hidden, weight, labels, ids, t_logits, seq_ce):
    shape = (TEACHERS, MEM_BATCH, MEM_LENGTH, VOCAB)
    targets = torch.zeros(shape, dtype=torch.bfloat16)  # the collator's dense targets, per teacher
    probs = torch.softmax(t_logits, -1).permute(2, 0, 1, 3).to(torch.bfloat16)
    targets.scatter_(-1, ids.permute(2, 0, 1, 3).long(), probs)
    best = torch.argmax(torch.exp(-seq_ce[:, 0]), -1)
    target = targets[best, torch.arange(MEM_BATCH)]
    logits = hidden @ weight.t()
    logp = torch.log_softmax(logits.float(), -1)
    fusion = torch.nn.functional.kl_div(logp, target.to(logp.dtype), reduction="none").sum(-1).mean()
    clm = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1))
    return 0.9 * clm + 0.1 * fusion


def _library_loss(hidden, weight, labels, ids, t_logits, seq_ce, fused):
    from fusekernels.loss.functional import fusion_loss
    from fusekernels.loss.fused_linear import fused_linear_fusion_loss

    kwargs = dict(teacher_ce=seq_ce.expand(MEM_BATCH, MEM_LENGTH, TEACHERS), fusion="mince", lam=0.9,
                  backend="torch")
    if fused:
        return fused_linear_fusion_loss(hidden, weight, labels, ids, t_logits, **kwargs)
    return fusion_loss(hidden @ weight.t(), labels, ids, t_logits, inplace_backward=True, **kwargs)


def _status_bytes(field):
    """A memory field of /proc/self/status (VmRSS, VmHWM) in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


def measure_memory(variant):
    """Forward + backward of one loss path in this (fresh) process; returns the growth of the
    peak resident set over the resident set before the call (bytes) and the seconds."""
    inputs = _memory_inputs()
    torch.zeros(1).requires_grad_().sum().backward()  # initialise the autograd engine first
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset the peak (VmHWM) to the current resident set
    before = _status_bytes("VmRSS")
    start = time.perf_counter()
    if variant == "published":
        loss = _published_loss(*inputs)
    else:
        loss = _library_loss(*inputs, fused=variant == "fused_linear")
    loss.backward()
    seconds = time.perf_counter() - start
    return {"peak_bytes": _status_bytes("VmHWM") - before, "seconds": seconds, "loss": float(loss.detach())}


@pytest.mark.parametrize("variant", ["published", "full_logits", "fused_linear"])
def test_loss_path_memory(benchmark, variant):
    if sys.platform != "linux":
        pytest.skip("the peak resident set is read from Linux /proc")
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo))

    def run():
        out = subprocess.run([sys.executable, __file__, variant], capture_output=True, text=True, env=env,
                             cwd=repo, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    MEMORY[variant] = benchmark.pedantic(run, rounds=1, iterations=1)


def test_z_report():
    lines = [f"threads={torch.get_num_threads()} model: V={VOCAB} hidden={HIDDEN} layers={LAYERS}, "
             f"{BATCH}x{LENGTH} tokens/step, {TEACHERS} teachers, k={K}"]
    if len(STEP_TIMES) == 3:
        base = STEP_TIMES["clm"]
        for name, sec in STEP_TIMES.items():
            lines.append(f"step {name:>20}: {sec * 1e3:8.1f} ms (median)  x{sec / base:.3f} vs plain CLM")
    if len(MEMORY) == 3:
        lines.append(f"loss path, hidden [{MEM_BATCH}, {MEM_LENGTH}, {HIDDEN}] x W [{VOCAB}, {HIDDEN}], "
                     "forward+backward:")
        base = MEMORY["published"]["peak_bytes"]
        for name, m in MEMORY.items():
            less = base / max(m["peak_bytes"], 1)
            lines.append(f"  {name:>13}: peak +{m['peak_bytes'] / 2**20:8.1f} MiB  ({less:5.1f}x "
                         f"less than published)  {m['seconds'] * 1e3:8.1f} ms  loss {m['loss']:.4f}")
    if len(lines) == 1:
        pytest.skip("run the whole file to get the report")
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    print(json.dumps(measure_memory(sys.argv[1])))
