"""FuseChat's pairwise recipe (pairwise fusion, then a parameter-space merge) as one resumable run.

Given a pivot model and N source models, each pair is fused into its own target model: the
pivot is trained on its own top-k distribution plus the source's, aligned to the pivot's tokens
(two teachers, MinCE, loss "ce", lam 0.9 as published); then the N targets are merged in
parameter space (VaRM by default, or linear / TIES / DARE / SLERP / task arithmetic).

Steps, each writing one folder under ``out``::

    pivot/              the pivot as a Hugging Face folder (start of every training, merge base)
    split/              texts split to fit every tokenizer
    extract-pivot/      the pivot's top-k and CE
    extract-source-i/   source i's top-k and CE
    align-i/            pivot + source i aligned to the pivot's tokens
    pack-i/             training blocks
    target-i/           the pivot trained on pair i
    merged/             the merged model

A step's folder appears only once complete (temporary folder + rename). Rerunning with the same
options skips the finished steps ("resuming: 3 of 9 steps done"); ``recipe.json`` records every
option that shapes the outputs and the content fingerprints of the inputs, and a rerun with any
of them changed is refused, naming it. The summary table at the end lists every step.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from . import choices

RECIPE_NAME = "recipe.json"
logger = logging.getLogger(__name__)
SUMMARY_NAME = "summary.json"


@dataclass
class PairwiseConfig:
    """Options of :func:`run_pairwise` (models: folders, ``.gguf`` files, bundled model names such
    as ``smollm2``, or Hub model ids)."""

    pivot: str = field(metadata={"help": "pivot model (folder, .gguf, bundled model name or Hub model id): the start "
                                         "of every target"})
    sources: list[str] = field(metadata={"help": "source models (folders, .gguf, bundled model names or Hub model "
                                                 "ids)"})
    data: str = field(metadata={"help": "texts (file or saved dataset)"})
    out: str = field(metadata={"help": "output folder (rerun with the same options to resume)"})
    pivot_tokenizer: str | None = field(default=None, metadata={"help": "pivot tokenizer (default: the pivot's)"})
    source_tokenizers: list[str] | None = field(default=None, metadata={
        "help": "source tokenizers (default: each source's)"})
    text_column: str = field(default="text", metadata={"help": "column holding the text"})
    max_length: int = field(default=2048, metadata={"min": 1, "help": "block size of split, extract and pack"})
    k: int = field(default=10, metadata={"min": 1, "help": "top-k stored per position"})
    align_method: str = field(default="byte_span", metadata={"flag": "--method", "choices": choices.alignment_modes,
                                                             "help": "token alignment"})
    fusion: str = field(default="mince", metadata={"choices": choices.training_fusions,
                                                   "help": "fusion of pivot and source"})
    loss_type: str = field(default="ce", metadata={"choices": choices.loss_types, "help": "fusion term (FuseChat: ce)"})
    lam: float = field(default=0.9, metadata={"help": "weight of the CLM term (FuseChat: 0.9)"})
    lam_schedule: str = field(default="hard", metadata={"choices": choices.lam_schedules, "help": "lam schedule"})
    temperature: float = field(default=1.0, metadata={"help": "teacher temperature"})
    precision: str = field(default="fp32", metadata={
        "choices": choices.precisions, "help": "extraction and loss in fp32, or rounded as the published code"})
    steps: int = field(default=1000, metadata={"min": 1, "help": "optimizer steps per pair"})
    batch_size: int = field(default=8, metadata={"min": 1, "help": "blocks per micro-batch"})
    grad_accum: int = field(default=1, metadata={"min": 1, "help": "gradient accumulation steps"})
    lr: float = field(default=1e-5, metadata={"help": "peak learning rate"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up steps"})
    seed: int = field(default=42, metadata={"help": "training seed (and DARE's)"})
    extract_batch_size: int = field(default=8, metadata={"min": 1, "help": "sequences per forward pass of extraction"})
    merge_method: str = field(default="varm", metadata={"flag": "--merge", "choices": choices.merge_methods,
                                                        "help": "merge of the target models"})
    merge_weights: list[float] | None = field(default=None, metadata={"help": "per-target merge weights"})
    merge_temperature: float | None = field(default=None, metadata={"help": "VaRM softmax temperature"})
    density: list[float] | None = field(default=None, metadata={"help": "ties / dare_*: density (default 0.5)"})
    t: float | list | dict = field(default=0.5, metadata={
        "parse": choices.merge_setting, "metavar": "T",
        "help": "slerp interpolation: a number, a gradient or filters, as `merge --t`"})
    cpu: bool = field(default=False, metadata={"help": "run on the CPU even when a GPU is present"})

    def __post_init__(self):
        self.sources = [str(s) for s in self.sources]
        if not self.sources:
            raise ValueError("sources must list at least one source model")
        if self.source_tokenizers is not None:
            self.source_tokenizers = [str(s) for s in self.source_tokenizers]
            if len(self.source_tokenizers) != len(self.sources):
                raise ValueError(f"{len(self.source_tokenizers)} source_tokenizers for {len(self.sources)} sources")
        if not 0.0 <= float(self.lam) <= 1.0:
            raise ValueError(f"lam must lie in [0, 1], got {self.lam}")
        from ..pipeline.merge import MERGE_METHODS

        MERGE_METHODS.check(self.merge_method, "merge_method")  # a registered method, before any work
        for name in ("max_length", "k", "steps", "batch_size", "grad_accum", "extract_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def _inputs(config: PairwiseConfig) -> list[str]:
    paths = [config.pivot, *config.sources, config.data]
    for tok in [config.pivot_tokenizer, *(config.source_tokenizers or [])]:
        if tok is not None and Path(tok).exists():
            paths.append(tok)
    return paths


def _recipe(config: PairwiseConfig) -> dict:
    """Every output-shaping option plus the content fingerprints of the input files."""
    from ..fingerprint import file_fingerprint

    options = {k: v for k, v in asdict(config).items() if k != "out"}
    options["fingerprints"] = {p: file_fingerprint(p) for p in _inputs(config)}
    return options


def _check_resume(out: Path, recipe: dict, inputs: list) -> bool:
    """True when ``out`` holds an earlier run of the same recipe; raises when it holds anything
    else, or when it is, contains or lies inside an input."""
    from ..storage import check_output_dir, check_writable

    path = out / RECIPE_NAME
    if not path.is_file():
        check_output_dir(out, inputs=inputs, arg="out")
        return False
    resolved = out.expanduser().resolve()
    for given in inputs:
        src = Path(given).expanduser().resolve()
        if resolved == src or resolved in src.parents or src in resolved.parents:
            raise ValueError(f"out {out} overlaps the input {given}: write to a separate folder")
    check_writable(resolved, arg="out")
    old = json.loads(path.read_text())
    changed = sorted(k for k in set(old) | set(recipe) if old.get(k) != recipe.get(k))
    if changed:
        raise ValueError(f"out {out} holds a pairwise run with other options ({', '.join(changed)} changed): "
                         "use another folder, or rerun with the same options to resume")
    return True


class _Steps:
    """Runs named steps into atomic folders, skipping those already complete; records a summary."""

    def __init__(self, out: Path):
        self.out, self.rows = out, []

    def run(self, name: str, build, describe=None) -> Path:
        from ..storage import atomic_dir

        final = self.out / name
        start = time.perf_counter()
        if final.is_dir():
            status = "resumed"
        else:
            logger.info(f"fusechat: {name} ...")
            with atomic_dir(final) as tmp:
                build(tmp)
            status = "ran"
        row = {"step": name, "status": status, "seconds": round(time.perf_counter() - start, 2)}
        if describe is not None:
            row.update(describe(final))
        self.rows.append(row)
        return final


def run_pairwise(config: PairwiseConfig, *, verbose: bool = True) -> dict:
    """Run (or resume) the pairwise recipe; returns the summary (also ``out/summary.json``).

    ``verbose``: progress bars and the printed summary table; each step and a resume are logged
    (``fusekernels.recipes.fusechat`` logger, info level)."""
    from ..pipeline.io import model_kind, resolve_model
    from ..storage import atomic_write_json

    # bundled model names and Hub model ids become their local files / snapshot folders (their
    # files are fingerprinted like any input)
    if any(model_kind(m) != "path" for m in [config.pivot, *config.sources]):
        config = replace(config, pivot=str(resolve_model(config.pivot)),
                         sources=[str(resolve_model(s)) for s in config.sources])
    out = Path(config.out)
    for given in _inputs(config):
        if not Path(given).exists():
            raise FileNotFoundError(f"input not found: {given}")
    recipe = _recipe(config)
    resumed = _check_resume(out, recipe, _inputs(config))
    out.mkdir(parents=True, exist_ok=True)
    n_steps = 4 + 4 * len(config.sources)
    if resumed:
        done = sum((out / name).is_dir() for name in _step_names(len(config.sources)))
        logger.info(f"fusechat: resuming: {done} of {n_steps} steps done in {out}")
    else:
        atomic_write_json(out / RECIPE_NAME, recipe)
    steps = _Steps(out)
    _run_steps(config, steps, verbose)
    summary = {"out": str(out), "resumed": resumed, "steps": steps.rows}
    atomic_write_json(out / SUMMARY_NAME, summary)
    if verbose:
        print(format_summary(summary))
    return summary


def _step_names(n: int) -> list[str]:
    names = ["pivot", "split", "extract-pivot"]
    for i in range(n):
        names += [f"extract-source-{i}", f"align-{i}", f"pack-{i}", f"target-{i}"]
    return names + ["merged"]


def _run_steps(config: PairwiseConfig, steps: _Steps, verbose: bool) -> None:
    import datasets

    from ..pipeline.align_step import align_teachers, alignment_stats
    from ..pipeline.extract import extract_teacher_topk, load_extracted
    from ..pipeline.io import load_model, load_rows, load_tokenizer
    from ..pipeline.merge import get_merge_method, merge_models
    from ..pipeline.pack import pack_sequences
    from ..pipeline.split import split_long_texts

    pivot_tok = load_tokenizer(config.pivot_tokenizer or config.pivot)
    source_toks = [load_tokenizer(t) for t in (config.source_tokenizers or config.sources)]

    def save_pivot(tmp):
        _plain_model(load_model(config.pivot)).save_pretrained(str(tmp))
        pivot_tok.save_pretrained(str(tmp))

    pivot_dir = steps.run("pivot", save_pivot)

    def split(tmp):
        rows = load_rows(config.data)
        if config.text_column not in rows.column_names:
            raise ValueError(f"data {config.data} has no column {config.text_column!r}")
        texts = rows.select_columns([config.text_column])
        split_long_texts(texts, [pivot_tok, *source_toks], config.max_length,
                         text_column=config.text_column).save_to_disk(str(tmp))

    split_dir = steps.run("split", split, lambda p: {"texts": len(datasets.load_from_disk(str(p)))})

    def extractor(model_path, tokenizer):
        def build(tmp):
            model = model_path if not isinstance(model_path, (str, Path)) else load_model(model_path)
            extract_teacher_topk(model, tokenizer, datasets.load_from_disk(str(split_dir)), k=config.k,
                                 batch_size=config.extract_batch_size, max_length=config.max_length,
                                 text_column=config.text_column, output_dir=tmp, precision=config.precision,
                                 device="cpu" if config.cpu else None, progress=verbose)
        return build

    def ce_of(path):
        rows = load_extracted(path)
        return {"sequences": len(rows), "metric_ce": round(float(sum(rows["metric_ce"]) / max(len(rows), 1)), 4)}

    pivot_rows_dir = steps.run("extract-pivot", extractor(pivot_dir, pivot_tok), ce_of)
    targets = []
    for i, (source, source_tok) in enumerate(zip(config.sources, source_toks)):
        source_dir = steps.run(f"extract-source-{i}", extractor(source, source_tok), ce_of)

        def align(tmp, source_dir=source_dir, source_tok=source_tok):
            aligned = align_teachers(load_extracted(pivot_rows_dir), [load_extracted(source_dir)],
                                     base_tokenizer=pivot_tok, teacher_tokenizers=[source_tok],
                                     method=config.align_method, include_base_teacher=True,
                                     text_column=config.text_column, fallback="published")
            aligned.save_to_disk(str(tmp))

        def rate(path):
            stats = alignment_stats(datasets.load_from_disk(str(path)))
            return {"positions": stats.positions, "source_rate": round(stats.rates[-1], 4)}

        align_dir = steps.run(f"align-{i}", align, rate)

        def pack(tmp, align_dir=align_dir):
            packed = pack_sequences(datasets.load_from_disk(str(align_dir)), config.max_length, drop_last=False)
            packed.save_to_disk(str(tmp))

        pack_dir = steps.run(f"pack-{i}", pack, lambda p: {"blocks": len(datasets.load_from_disk(str(p)))})
        target = steps.run(f"target-{i}", lambda tmp, pack_dir=pack_dir: _train(config, pivot_dir, pack_dir, tmp),
                           _training_row)
        steps.rows[-1]["source"] = str(source)
        targets.append(target)

    def merge(tmp):
        # merge_models refuses an existing folder: write into a fresh name inside the temporary one
        spec = get_merge_method(config.merge_method)  # the registry says what the method takes
        merge_models(targets, tmp / "model", method=config.merge_method,
                     base=pivot_dir if spec.base != "unused" else None,
                     weights=config.merge_weights, temperature=config.merge_temperature, density=config.density,
                     **{k: v for k, v in (("t", config.t), ("seed", config.seed)) if k in spec.options},
                     progress=False)
        for item in (tmp / "model").iterdir():
            os.replace(item, tmp / item.name)
        (tmp / "model").rmdir()
        pivot_tok.save_pretrained(str(tmp))

    steps.run("merged", merge, lambda p: {"method": config.merge_method, "targets": len(targets)})


def _plain_model(model):
    """A GGUF-loaded model is dequantised but still flagged as quantized, which transformers
    neither saves nor trains: copy its weights into a plain model of the same config."""
    if getattr(model, "hf_quantizer", None) is None:
        return model
    import copy

    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    plain.load_state_dict(model.state_dict())
    return plain


def _train(config: PairwiseConfig, pivot_dir: Path, pack_dir: Path, tmp: Path) -> None:
    import datasets
    from transformers import TrainingArguments

    from ..integration import FusionArguments, FusionTrainer
    from ..pipeline.io import load_model, load_tokenizer

    model = load_model(pivot_dir)
    tokenizer = load_tokenizer(pivot_dir)
    fusion = FusionArguments(num_teachers=2, fusion=config.fusion, loss_type=config.loss_type, lam=config.lam,
                             lam_schedule=config.lam_schedule, temperature=config.temperature,
                             precision=config.precision)
    args = TrainingArguments(output_dir=str(tmp / "_trainer"), max_steps=config.steps,
                             per_device_train_batch_size=config.batch_size,
                             gradient_accumulation_steps=config.grad_accum, learning_rate=config.lr,
                             warmup_steps=config.warmup_steps, logging_steps=1, seed=config.seed,
                             data_seed=config.seed, save_strategy="no", report_to=[], use_cpu=config.cpu,
                             disable_tqdm=True)
    trainer = FusionTrainer(model=model, args=args, train_dataset=datasets.load_from_disk(str(pack_dir)),
                            processing_class=tokenizer, fusion_args=fusion)
    trainer.train()
    trainer.save_model(str(tmp))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    (tmp / "fusechat_training.json").write_text(json.dumps({"steps": trainer.state.global_step, "losses": losses}))
    import shutil

    shutil.rmtree(tmp / "_trainer", ignore_errors=True)


def _training_row(path: Path) -> dict:
    record = json.loads((path / "fusechat_training.json").read_text())
    losses = record["losses"]
    return {"train_steps": record["steps"], "first_loss": round(losses[0], 4) if losses else None,
            "last_loss": round(losses[-1], 4) if losses else None}


def format_summary(summary: dict) -> str:
    """The summary as a fixed-width table, one line per step."""
    lines = ["", f"== fusechat pairwise: {summary['out']} ==",
             f"{'step':<18} {'status':<8} {'seconds':>8}  details"]
    for row in summary["steps"]:
        details = ", ".join(f"{k}={v}" for k, v in row.items() if k not in ("step", "status", "seconds"))
        lines.append(f"{row['step']:<18} {row['status']:<8} {row['seconds']:>8.1f}  {details}")
    return "\n".join(lines)
