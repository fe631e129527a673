"""Render the numbers of README.md and benchmarks/RESULTS.md from the committed result files.

Every number-bearing passage sits in a region ``<!-- figures:NAME -->...<!-- /figures:NAME -->``
whose text is produced by the renderer registered under NAME from one JSON file of
``benchmarks/results/``. A region whose start marker is a line of its own is a block (its text on the
lines between the markers); otherwise it is inline (one line of text between the markers).

    python benchmarks/figures.py            # rewrite the regions in place
    python benchmarks/figures.py --check    # exit 1 and show a diff where a region is out of date
    python benchmarks/figures.py --record-demo COLD WARM   # merge two demo runs into results/demo.json

``--record-demo`` takes the output folders of two ``fusekernels demo`` runs with the same options,
the first with an empty cache (``FUSEKERNELS_CACHE`` pointing at a new folder), the second right
after it with the same cache.
"""
from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOCUMENTS = ("README.md", "benchmarks/RESULTS.md")
MARKER = re.compile(r"<!-- (/?)figures:([A-Za-z0-9_.-]+) -->")


@dataclass
class Region:
    """One region of a document: ``start``/``end`` delimit its text (markers excluded)."""
    name: str
    start: int
    end: int
    line: int      # 1-based line of the start marker
    block: bool    # text on its own lines between the markers


def parse_regions(text: str, path: str = "<text>") -> list[Region]:
    """The regions of ``text`` in order; ValueError naming the file and line for a start marker
    without its end, an end marker without its start, or nested regions."""
    regions, open_ = [], None
    for m in MARKER.finditer(text):
        closing, name = m.group(1) == "/", m.group(2)
        line = text.count("\n", 0, m.start()) + 1
        if not closing:
            if open_ is not None:
                raise ValueError(f"{path}:{open_[1]}: region '{open_[0]}' has no end marker "
                                 f"'<!-- /figures:{open_[0]} -->' before region '{name}' starts at line {line}")
            open_ = (name, line, m.end(), text.startswith("\n", m.end()) and
                     (m.start() == 0 or text[m.start() - 1] == "\n"))
        elif open_ is None or open_[0] != name:
            what = f"inside region '{open_[0]}' (line {open_[1]})" if open_ else "without its start marker"
            raise ValueError(f"{path}:{line}: end marker of region '{name}' {what}")
        else:
            regions.append(Region(name, open_[2], m.start(), open_[1], open_[3]))
            open_ = None
    if open_ is not None:
        raise ValueError(f"{path}:{open_[1]}: region '{open_[0]}' has no end marker '<!-- /figures:{open_[0]} -->'")
    return regions


RENDERERS: dict[str, tuple[str, object]] = {}


def renderer(name: str, source: str):
    """Register ``fn(data) -> str`` as the renderer of region ``name`` from ``results/<source>``."""
    def register(fn):
        RENDERERS[name] = (source, fn)
        return fn
    return register


def render_region(name: str, load, where: str = "") -> str:
    """The text of region ``name``; ``load(source)`` returns a result file's parsed JSON."""
    if name not in RENDERERS:
        raise ValueError(f"{where}unknown figures region '{name}' (known: {', '.join(sorted(RENDERERS))})")
    source, fn = RENDERERS[name]
    return fn(load(source)).strip("\n")


def render_text(text: str, load, path: str = "<text>") -> str:
    """``text`` with every region's text replaced by what its renderer gives."""
    out, pos = [], 0
    for r in parse_regions(text, path):
        body = render_region(r.name, load, f"{path}:{r.line}: ")
        if not r.block and "\n" in body:
            raise ValueError(f"{path}:{r.line}: region '{r.name}' renders several lines; put its markers on "
                             "their own lines")
        out += [text[pos:r.start], f"\n{body}\n" if r.block else body]
        pos = r.end
    return "".join(out) + text[pos:]


def loader(folder: Path = RESULTS):
    """``load(source)``: the parsed JSON of ``folder/source`` (read once)."""
    seen = {}

    def load(source: str):
        if source not in seen:
            path = folder / source
            if not path.is_file():
                raise FileNotFoundError(f"result file {path} is missing (commit it, or run what produces it)")
            seen[source] = json.loads(path.read_text(encoding="utf-8"))
        return seen[source]
    return load


def _stale(root: Path | None, load):
    """``(path, committed text, rendered text)`` of every document whose regions are out of date."""
    root = root or ROOT
    load = load or loader(root / "benchmarks" / "results")
    for doc in DOCUMENTS:
        path = root / doc
        text = path.read_text(encoding="utf-8")
        new = render_text(text, load, doc)
        if new != text:
            yield path, text, new


def check(root: Path | None = None, load=None) -> list[str]:
    """A unified diff per document whose regions differ from what the result files render."""
    root = root or ROOT
    diffs = []
    for path, text, new in _stale(root, load):
        doc = path.relative_to(root)
        diffs.append("".join(difflib.unified_diff(text.splitlines(True), new.splitlines(True),
                                                  f"{doc} (committed)", f"{doc} (rendered)", n=1)))
    return diffs


def write(root: Path | None = None, load=None) -> list[str]:
    """Rewrite the regions in place; returns the documents that changed."""
    root = root or ROOT
    changed = []
    for path, _, new in list(_stale(root, load)):
        path.write_text(new, encoding="utf-8")
        changed.append(str(path.relative_to(root)))
    return changed


# ---------------------------------------------------------------- formatting helpers

def duration(seconds: float) -> str:
    """``41.3 s``, ``2 min 36 s``, ``1 h 38 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {sec} s"
    return f"{minutes // 60} h {minutes % 60} min"


def load_text(machine: dict | None) -> str:
    """``load average 4.9 (mean of the 1-minute value during the run) on 2 CPUs``; start -> end
    where the run has no samples; or that none was recorded."""
    cpus = (machine or {}).get("cpu_count")
    return load_short(machine, detail=True) + (f" on {cpus} CPUs" if cpus else "")


def load_short(machine: dict | None, detail: bool = False) -> str:
    """``load average 4.9``: the mean of the 1-minute load average sampled during the run."""
    if machine and machine.get("loadavg_mean") is not None:
        return f"load average {machine['loadavg_mean']:.1f}" + (
            " (mean of the 1-minute value during the run)" if detail else "")
    if machine and machine.get("loadavg_start") and machine.get("loadavg_end"):
        return f"load average {machine['loadavg_start'][0]:.1f} -> {machine['loadavg_end'][0]:.1f}" + (
            " (1-minute, start -> end)" if detail else "")
    return "load average not recorded"


def verdict(entry: dict, label: str, digits: int = 1) -> str:
    """A paired difference in words: ``beats it in every seed``, ``equals it within the spread`` ..."""
    n, wins = len(entry[label]), entry["wins"]
    diff = f"{entry['mean']:+.{digits}f} ± {entry['std']:.{digits}f}; {wins} of {n} seeds better"
    if abs(entry["mean"]) <= entry["std"]:
        return f"equals it within the seed spread ({diff})"
    if entry["mean"] < 0:
        return f"beats it{' in every seed' if wins == n else ''} ({diff})"
    return f"is worse{' in every seed' if wins == 0 else ''} ({diff})"


def pct(x: float) -> str:
    return f"{x:.1%}"


def short(name: str) -> str:
    """``SmolLM2-135M`` -> ``SmolLM2``, ``Gemma-3-270M`` -> ``Gemma-3`` (the size suffix dropped)."""
    return re.sub(r"-\d+(\.\d+)?[MB]$", "", name)


# ---------------------------------------------------------------- reproduce.json

def _reproduce():
    from fusekernels.recipes import reproduce
    return reproduce


@renderer("reproduce-results", "reproduce.json")
def reproduce_results(d: dict) -> str:
    """The full tables, exactly as ``fusekernels reproduce`` writes its RESULTS.md."""
    return _reproduce().format_tables(d)


@renderer("reproduce-run", "reproduce.json")
def reproduce_run(d: dict) -> str:
    """The command of the committed run and its wall time with the load it ran under."""
    return (f"Command of the committed run (`benchmarks/results/reproduce.json`), {duration(d['total_seconds'])} "
            f"wall, {load_text(d.get('machine'))}:\n\n```bash\n{d['command']}\n```")


def _epochs(d: dict, key: str, steps: str, batch: str) -> tuple[float, int]:
    cfg, table = d["config"], d[key]
    seen = cfg[steps] * cfg[batch]
    return seen / sum(table["blocks"].values()), seen * cfg["block_size"]


@renderer("reproduce-config", "reproduce.json")
def reproduce_config(d: dict) -> str:
    """The configuration sentence: weights, steps, how much of the training mix each table sees."""
    cfg = d["config"]
    s_epochs, s_tokens = _epochs(d, "student_table", "steps", "batch_size")
    parts = [f"lam {cfg['lam']} for the student and {cfg['target_lam']} for the target, ALM temperature "
             f"{cfg['alm_temperature']:g}; the student: {cfg['steps']} steps of {cfg['batch_size']} x "
             f"{cfg['block_size']} tokens at lr {cfg['lr']:g}, {s_epochs:.1f} epochs of the "
             f"{sum(d['student_table']['blocks'].values())}-block training mix ({s_tokens:,} tokens seen)"]
    if "target_table" in d:
        t_epochs, t_tokens = _epochs(d, "target_table", "target_steps", "target_batch_size")
        parts.append(f"the target: {cfg['target_steps']} steps of {cfg['target_batch_size']} x {cfg['block_size']} "
                     f"tokens at lr {cfg['target_lr']:g} ({t_tokens:,} tokens, {t_epochs:.2f} epochs)")
    return "; ".join(parts) + f"; seeds 0 to {cfg['seeds'] - 1}."


def _best(d: dict, table: str = "table1") -> tuple[str, dict]:
    paired = d["paired"][table]
    arm = min(paired, key=lambda a: paired[a]["mean"])
    return arm, paired[arm]


def _mean(d: dict, key: str, arm: str) -> float:
    return d[key]["summary"][arm]["perplexity"]["mean"]["mean"]


def _diff(entry: dict, label: str) -> str:
    n = len(entry[label])
    return f"{entry['mean']:+.1f} ± {entry['std']:.1f} ({entry['wins']} of {n} seeds better)"


def _top_choices(shares: dict) -> str:
    return ", ".join(f"{short(n)} {pct(v)}" for n, v in sorted(shares.items(), key=lambda kv: -kv[1]) if n != "none")


@renderer("reproduce-findings", "reproduce.json")
def reproduce_findings(d: dict) -> str:
    """The numbers the discussion of the reproduce run rests on, one bullet per finding."""
    rep = _reproduce()
    paired1 = d["paired"]["table1"]
    reference = next(iter(paired1.values()))["reference"]
    best, entry = _best(d)
    ref_mean, best_mean = _mean(d, "student_table", reference), _mean(d, "student_table", best)
    summary = d["student_table"]["summary"]
    domains = d["domains"]
    rows = [a for a in rep.arm_order(d, summary) if a not in ("initial",)]
    best_on = [dom for dom in domains if min(rows, key=lambda a: summary[a]["perplexity"][dom]["mean"]) == best]
    lines = [f"- Table 1, best fused row against the best single teacher (`{reference}`): `{best}`, mean held-out "
             f"perplexity over the {len(domains)} domains {best_mean:.1f} vs {ref_mean:.1f} "
             f"({best_mean / ref_mean - 1:+.1%}), paired difference {_diff(entry, 'vs_best_single')}; "
             f"best row on {'every domain' if best_on == domains else ', '.join(best_on) or 'no single domain'}"
             + "".join(f" ({dom}: {summary[best]['perplexity'][dom]['mean']:.0f} vs "
                       f"{summary[reference]['perplexity'][dom]['mean']:.0f})" for dom in domains[-1:]) + "."]
    others = [a for a in rep.arm_order(d, paired1) if a != best]
    lines.append(f"- The other fused rows against `{reference}`: "
                 + "; ".join(f"`{a}` {_diff(paired1[a], 'vs_best_single')}" for a in others) + ".")
    if "clm_only" in summary:
        lines.append("- Mean held-out perplexity over domains, CLM-only "
                     f"{_mean(d, 'student_table', 'clm_only'):.0f}; "
                     + ", ".join(f"`{a}` {_mean(d, 'student_table', a):.0f}" for a in others if a in summary) + ".")
    choices = d["student_table"]["choices"]
    lines.append("- MinCE's choices in table 1 (share of positions): " + "; ".join(
        f"{level} level, {dom}: {_top_choices(choices[level][dom])}"
        for level in rep.ordered(choices, ("sequence", "token"))
        for dom in rep.ordered(choices[level], d["train_domains"])) + ".")
    if "target_table" in d:
        t = d["target_table"]
        paired2 = d["paired"]["table2"]
        clm = _mean(d, "target_table", "clm_only")
        lines.append(f"- Table 2 ({t['target']} continually trained) against `clm_only`: " + "; ".join(
            f"`{a}` {paired2[a]['mean']:+.2f} ± {paired2[a]['std']:.2f} "
            f"({paired2[a]['mean'] / clm:+.1%} of {clm:.2f}; "
            f"{paired2[a]['wins']} of {len(paired2[a]['vs_clm_only'])} seeds better)"
            for a in rep.arm_order(d, paired2))
            + f"; untouched {_mean(d, 'target_table', 'untouched'):.2f} -> CLM-only {clm:.2f}.")
        first = rep.ordered(t["choices"]["sequence"], d["train_domains"])[0]
        shares = t["choices"]["sequence"][first]
        td, nt = d["teacher_domains"], domains[0]
        curve = t["seeds"][sorted(t["seeds"])[0]]["fusellm"]["curve"]
        for teacher in (n for n in shares if n not in ("base", "none") and n in td and t["target"] in td):
            lines.append(f"- Table 2's MinCE gives the target {short(teacher)}'s distribution on "
                         f"{pct(shares[teacher])} of its {first} positions (sequence level); on {nt} "
                         f"{short(teacher)} scores {td[teacher][nt]['nats_per_byte']:.3f} nats per byte against the "
                         f"target's {td[t['target']][nt]['nats_per_byte']:.3f}.")
        lines.append(f"- With lam {d['config']['target_lam']}, table 2's fusion term moves from "
                     f"{curve[0]['fusion_loss']:.2f} nats (step {curve[0]['step']}) to {curve[-1]['fusion_loss']:.2f} "
                     f"(step {curve[-1]['step']}) in the first seed, its CLM term from {curve[0]['clm_loss']:.2f} to "
                     f"{curve[-1]['clm_loss']:.2f}.")
    return "\n".join(lines)


@renderer("readme-reproduce-findings", "reproduce.json")
def readme_reproduce_findings(d: dict) -> str:
    """README's verdict: the best fused row and MinCE against the best single teacher; table 2's
    fused row against CLM-only."""
    best, entry = _best(d)
    paired1 = d["paired"]["table1"]
    reference = entry["reference"]
    out = [f"`{best}` {verdict(entry, 'vs_best_single')}"]
    out += [f"`{arm}` {verdict(paired1[arm], 'vs_best_single')}" for arm in ("fusellm_mince", "fusellm_mince_token")
            if arm in paired1 and arm != best]
    text = (f"Against the best single teacher (`{reference}`), on the mean held-out perplexity over domains: "
            + "; ".join(out) + ".")
    if "table2" in d["paired"] and "fusellm" in d["paired"]["table2"]:
        text += (f" In table 2, against CLM-only continual training, `fusellm` "
                 f"{verdict(d['paired']['table2']['fusellm'], 'vs_clm_only', 2)}.")
    return text


@renderer("readme-headline", "reproduce.json")
def readme_headline(d: dict) -> str:
    """The README's opening result: the best fused row of table 1 against the best single
    teacher (paired), and table 2's fused row against CLM-only, as measured."""
    best, entry = _best(d)
    reference = entry["reference"]
    ref_mean, best_mean = _mean(d, "student_table", reference), _mean(d, "student_table", best)
    n = len(entry["vs_best_single"])
    text = (f"`{best}` reaches a mean held-out perplexity of {best_mean:.1f} against {ref_mean:.1f} for the best "
            f"single teacher (`{reference}`): {entry['mean']:+.1f} ± {entry['std']:.1f} paired, "
            f"{entry['wins']} of {n} seeds better")
    if "table2" in d["paired"] and "fusellm" in d["paired"]["table2"]:
        t2 = d["paired"]["table2"]["fusellm"]
        text += (f". Continual training of SmolLM2-135M itself does not gain yet: FuseLLM against CLM-only "
                 f"{t2['mean']:+.2f} ± {t2['std']:.2f} perplexity ({t2['wins']} of {len(t2['vs_clm_only'])} "
                 f"seeds better)")
    return text + "."


@renderer("readme-reproduce", "reproduce.json")
def readme_reproduce(d: dict) -> str:
    """README's short form: the command, both tables per held-out domain with the paired
    differences, and the run's wall time."""
    rep = _reproduce()
    cfg, domains = d["config"], d["domains"]
    out = [f"```bash\n{d['command']}\n```", "",
           f"{duration(d['total_seconds'])} wall, {load_text(d.get('machine'))}; {cfg['seeds']} seeds, mean ± std of "
           "the held-out perplexity; the last column pairs each fused row with its reference seed by seed "
           "(negative = fusion better)."]
    titles = {"student_table": "Table 1, a tiny student with the Mistral tokenizer trained on {train} ({steps} steps)",
              "target_table": "Table 2, {target_name} itself as the continually trained target "
                              "({target_steps} steps), as "
                              "the Llama-2 / Llama-2-CLM / FuseLLM rows of the published table"}
    for key, paired_key, label in (("student_table", "table1", "vs_best_single"),
                                   ("target_table", "table2", "vs_clm_only")):
        if key not in d:
            continue
        title = titles[key].format(train=" + ".join(d["train_domains"]), target_name=d[key].get("target"), **cfg)
        summary, paired = d[key]["summary"], d["paired"][paired_key]
        reference = next(iter(paired.values()))["reference"]
        out += ["", title + ":", "",
                "| row | " + " | ".join(domains) + f" | mean over domains | vs `{reference}` |",
                "|---" * (len(domains) + 3) + "|"]
        for arm in rep.arm_order(d, summary):
            ppl = summary[arm]["perplexity"]
            digits = 0 if ppl["mean"]["mean"] >= 100 else 2
            cells = [f"{ppl[c]['mean']:.{digits}f} ± {ppl[c]['std']:.{digits}f}" for c in domains + ["mean"]]
            diff = (f"{paired[arm]['mean']:+.{digits}f} ± {paired[arm]['std']:.{digits}f} "
                    f"({paired[arm]['wins']}/{len(paired[arm][label])})" if arm in paired else "")
            out.append(f"| {arm} | " + " | ".join(cells) + f" | {diff} |")
    return "\n".join(out)


# ---------------------------------------------------------------- demo.json

def _demo_runs(d: dict) -> tuple[dict, dict]:
    return d["cold"], d["warm"]


def _ppl(run: dict) -> dict:
    return {"initial": run["initial_eval_perplexity"], **{n: r["eval_perplexity"] for n, r in run["runs"].items()}}


def _arm_names(run: dict) -> tuple[str, str]:
    fusion = next(n for n in run["runs"] if n != "clm_only")
    return fusion, "clm_only"





def _same_perplexity(cold: dict, warm: dict) -> str:
    a, b = _ppl(cold), _ppl(warm)
    if all(f"{a[k]:.2f}" == f"{b[k]:.2f}" for k in a):
        return "the warm run gave the same perplexities to 2 decimals"
    return "the warm run gave " + ", ".join(f"{k} {v:.2f}" for k, v in b.items())


@renderer("demo-quickstart", "demo.json")
def demo_quickstart(d: dict) -> str:
    """One line for the Quick start: cold and warm time with load, perplexities, MinCE shares."""
    cold, warm = _demo_runs(d)
    fusion, clm = _arm_names(cold)
    choices = cold["mince_choices"]
    return (f"first run {duration(cold['total_seconds'])} at {load_text(cold.get('machine'))}, Gemma assembly and "
            f"tokenizer conversions included; second run {duration(warm['total_seconds'])} at "
            f"{load_short(warm.get('machine'))}, teacher outputs from the cache). Held-out perplexity after "
            f"{cold['config']['steps']} steps: fusion {cold['runs'][fusion]['eval_perplexity']:.1f}, CLM-only "
            f"{cold['runs'][clm]['eval_perplexity']:.1f}; MinCE chose "
            + " and ".join(f"{short(n)} on {pct(choices[n])}" for n in cold["teachers"]) + " of the positions")


@renderer("demo-results", "demo.json")
def demo_results(d: dict) -> str:
    """RESULTS' demo section: configuration, cold and warm timings with their load, data, stage
    times, alignment coverage, MinCE choices, loss curves and held-out perplexity."""
    cold, warm = _demo_runs(d)
    cfg, pipe, data = cold["config"], cold["pipeline"], cold["data"]
    fusion, clm = _arm_names(cold)
    machine = cold["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    student = cold.get("student_parameters")
    lines = [
        f"Defaults: {cfg['train_docs']} KJV documents of {cfg['verses_per_doc']} verses ({cfg['eval_docs']} held out), "
        f"block {cfg['block_size']}, k {cfg['k']}, {cfg['steps']} steps of batch {cfg['batch_size']}, "
        f"lr {cfg['lr']:g}, "
        f"lam {cfg['lam']}, {cfg['fusion']} fusion, {cfg['loss_type']} term, {cfg['method']} alignment, unaligned "
        f"positions: {cfg['fallback']}; student: {cfg['num_layers']} layers, hidden {cfg['hidden_size']}"
        + (f", {student / 1e6:.1f}M parameters" if student else "") + f". Measured with {versions} on "
        f"{machine['cpu_count']} CPUs ({machine['torch_threads']} torch threads), `nice`d on a machine shared with "
        f"other jobs (the 1-minute load average sampled every {machine.get('loadavg_every_s', 0):g} s):",
        "",
        "| run | caches | wall | CPU | load average during the run: mean (max) |",
        "|---|---|---|---|---|",
    ]
    for what, run in (("first (cold)", cold), ("second (warm)", warm)):
        m = run["machine"]
        gguf = run["timings"].get("gemma_gguf")
        caches = ", ".join(f"{short(t['name'])} outputs {t['cache']}" for t in run["pipeline"]["teachers"])
        caches += f", Gemma GGUF {gguf}" if gguf else ""
        load = (f"{m['loadavg_mean']:.1f} ({m['loadavg_max']:.1f})" if m.get("loadavg_mean") is not None
                else "not recorded")
        lines.append(f"| {what} | {caches} | {duration(run['total_seconds'])} | {duration(run['cpu_seconds'])} | "
                     f"{load} |")
    lines += ["", "Stage wall times (seconds; the rest of the total is building the students and the initial "
              "evaluation):", "", "| stage | first run | second run |", "|---|---|---|"]
    order = (["load", "split"] + [f"extract {t}" for t in cold["teachers"]] + ["align", "pack"]
             + [f"{what} {arm}" for what in ("train", "eval") for arm in (fusion, clm)])
    stages = [st for st in order if st in cold["stage_seconds"]]
    stages += sorted(set(cold["stage_seconds"]) - set(stages))
    for stage in stages:
        second = warm["stage_seconds"].get(stage)
        lines.append(f"| {stage} | {cold['stage_seconds'][stage]:.1f} | "
                     + ("–" if second is None else f"{second:.1f}") + " |")
    lines += [
        "",
        f"- data: {cfg['train_docs']} documents -> {pipe['texts']} texts after the split -> "
        f"{pipe['student_positions']} student tokens -> {data['train_blocks']} training blocks, "
        f"{data['eval_blocks']} held-out blocks;",
        "- extraction, first run (model load and dequantisation included): " + ", ".join(
            f"{t['name']} {t['tokens']} tokens in {t['seconds']:.1f} s" for t in pipe["teachers"]) + ";",
        "- alignment coverage (student positions with the teacher's real distribution): " + ", ".join(
            f"{short(t['name'])} {pct(t['coverage'])}" for t in pipe["teachers"]) + ";",
        "- MinCE chose " + ", ".join(f"{short(n)} on {pct(cold['mince_choices'][n])}" for n in cold["teachers"])
        + f" of the positions, no teacher on {pct(cold['mince_choices']['none'])};",
        f"- training (same initial weights, data order and seed): fusion {cold['runs'][fusion]['seconds']:.1f} s "
        f"({cold['runs'][fusion]['tokens_per_s']:.0f} tokens/s), CLM only {cold['runs'][clm]['seconds']:.1f} s "
        f"({cold['runs'][clm]['tokens_per_s']:.0f} tokens/s);",
        "",
        "| step | fusion run: loss | its CLM part | its KL part | CLM-only run: loss |",
        "|---|---|---|---|---|",
    ]
    for a, b in zip(cold["runs"][fusion]["curve"], cold["runs"][clm]["curve"]):
        lines.append(f"| {a['step']} | {a['loss']:.3f} | {a['clm_loss']:.3f} | {a['fusion_loss']:.3f} | "
                     f"{b['loss']:.3f} |")
    f_ppl, c_ppl = cold["runs"][fusion]["eval_perplexity"], cold["runs"][clm]["eval_perplexity"]
    lines += ["", f"- held-out perplexity (student tokens, {data['eval_blocks']} x {data['block_size']}): initial "
              f"{cold['initial_eval_perplexity']:.0f}, fusion **{f_ppl:.2f}**, CLM only **{c_ppl:.2f}** "
              f"({f_ppl / c_ppl - 1:+.1%} with fusion; one seed); {_same_perplexity(cold, warm)}."]
    return "\n".join(lines)


# ---------------------------------------------------------------- recording the demo

def record_demo(cold_dir: Path, warm_dir: Path, target: Path = RESULTS / "demo.json") -> dict:
    """Merge the ``demo_results.json`` of a cold and a warm run into ``target``: ``{"cold", "warm"}``,
    without their output paths. ValueError when the options differ or the caches were not cold
    then warm."""
    runs = {}
    for key, folder in (("cold", cold_dir), ("warm", warm_dir)):
        path = Path(folder) / "demo_results.json"
        if not path.is_file():
            raise FileNotFoundError(f"{key} run: {path} not found (the --out folder of a `fusekernels demo` run)")
        run = json.loads(path.read_text(encoding="utf-8"))
        run.pop("out", None)
        run["config"].pop("out", None)
        runs[key] = run
    if runs["cold"]["config"] != runs["warm"]["config"]:
        raise ValueError("the two demo runs used different options; rerun both with the same ones")
    for key in ("cold", "warm"):
        if runs[key].get("cache") != key:
            raise ValueError(f"the {key} run's teacher caches were '{runs[key].get('cache')}', not '{key}': run the "
                             "first with an empty FUSEKERNELS_CACHE and the second right after it with the same one")
    target.write_text(json.dumps(runs, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return runs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report regions that differ; change nothing")
    parser.add_argument("--record-demo", nargs=2, metavar=("COLD", "WARM"),
                        help="merge two demo output folders into benchmarks/results/demo.json first")
    args = parser.parse_args(argv)
    try:
        if args.record_demo:
            record_demo(*map(Path, args.record_demo))
        if args.check:
            problems = check()
            for p in problems:
                print(p, end="")
            if problems:
                print("figures out of date: run `python benchmarks/figures.py`", file=sys.stderr)
                return 1
            return 0
        for doc in write():
            print(f"updated {doc}")
    except (ValueError, FileNotFoundError) as err:
        print(f"figures: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
