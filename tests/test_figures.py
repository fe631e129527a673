"""benchmarks/figures.py: README and RESULTS numbers equal what the committed result files render."""
import copy
import json
import random
from pathlib import Path

import pytest

from benchmarks import figures

ROOT = Path(__file__).resolve().parent.parent


def test_documents_match_the_committed_results():
    problems = figures.check(ROOT)
    assert not problems, "run `python benchmarks/figures.py`:\n" + "\n".join(problems)


def test_every_renderer_is_used_and_every_region_is_known():
    used = set()
    for doc in figures.DOCUMENTS:
        used |= {r.name for r in figures.parse_regions((ROOT / doc).read_text(encoding="utf-8"), doc)}
    assert used == set(figures.RENDERERS)


def test_parse_block_and_inline_regions():
    text = "a\n<!-- figures:x -->\nold\n<!-- /figures:x -->\nb <!-- figures:y -->1.0<!-- /figures:y --> c\n"
    x, y = figures.parse_regions(text)
    assert (x.name, x.block, x.line, text[x.start:x.end]) == ("x", True, 2, "\nold\n")
    assert (y.name, y.block, y.line, text[y.start:y.end]) == ("y", False, 5, "1.0")


def test_render_replaces_only_region_text(monkeypatch):
    monkeypatch.setitem(figures.RENDERERS, "x", ("x.json", lambda d: f"| n |\n|---|\n| {d['n']} |"))
    monkeypatch.setitem(figures.RENDERERS, "y", ("x.json", lambda d: f"{d['n'] * 2}"))
    text = "a\n<!-- figures:x -->\nold\n<!-- /figures:x -->\nb <!-- figures:y -->1<!-- /figures:y --> c\n"
    new = figures.render_text(text, lambda source: {"n": 7})
    assert new == ("a\n<!-- figures:x -->\n| n |\n|---|\n| 7 |\n<!-- /figures:x -->\n"
                   "b <!-- figures:y -->14<!-- /figures:y --> c\n")
    assert figures.render_text(new, lambda source: {"n": 7}) == new  # idempotent


@pytest.mark.parametrize("text, message", [
    ("x\n<!-- figures:demo-results -->\nold\n", r"doc.md:2: region 'demo-results' has no end marker"),
    ("<!-- figures:a -->\n<!-- figures:b -->\n<!-- /figures:b -->\n",
     r"doc.md:1: region 'a' has no end marker .* line 2"),
    ("\n\n<!-- /figures:a -->\n", r"doc.md:3: end marker of region 'a' without its start marker"),
    ("<!-- figures:a -->\n<!-- /figures:b -->\n", r"doc.md:2: end marker of region 'b' inside region 'a'"),
])
def test_parser_errors_name_the_file_line_and_region(text, message):
    with pytest.raises(ValueError, match=message):
        figures.parse_regions(text, "doc.md")


def test_unknown_region_name_is_a_clear_error():
    with pytest.raises(ValueError, match=r"doc.md:1: unknown figures region 'nope' \(known: .*demo-results"):
        figures.render_text("<!-- figures:nope -->\n\n<!-- /figures:nope -->\n", lambda s: {}, "doc.md")


def test_inline_region_must_render_one_line(monkeypatch):
    monkeypatch.setitem(figures.RENDERERS, "x", ("x.json", lambda d: "a\nb"))
    with pytest.raises(ValueError, match="renders several lines"):
        figures.render_text("p <!-- figures:x -->a<!-- /figures:x -->", lambda s: {}, "doc.md")


def test_check_reports_a_diff_and_main_exits_1(tmp_path, monkeypatch):
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    for doc in figures.DOCUMENTS:
        (tmp_path / doc).write_text("no regions\n")
    monkeypatch.setitem(figures.RENDERERS, "x", ("x.json", lambda d: f"value {d['v']}"))
    (tmp_path / "benchmarks" / "results" / "x.json").write_text(json.dumps({"v": 2}))
    (tmp_path / "README.md").write_text("n = <!-- figures:x -->value 1<!-- /figures:x -->\n")
    problems = figures.check(tmp_path)
    assert len(problems) == 1 and "-n = <!-- figures:x -->value 1" in problems[0] and "+n = " in problems[0]
    monkeypatch.setattr(figures, "ROOT", tmp_path)
    assert figures.main(["--check"]) == 1
    assert figures.main([]) == 0 and figures.main(["--check"]) == 0
    assert (tmp_path / "README.md").read_text() == "n = <!-- figures:x -->value 2<!-- /figures:x -->\n"
    (tmp_path / "benchmarks" / "results" / "x.json").unlink()
    assert figures.main(["--check"]) == 2  # missing result file: a message, not a traceback


@pytest.mark.parametrize("mean, std, wins, words", [
    (-5.0, 1.0, 3, "beats it in every seed (-5.0 ± 1.0; 3 of 3 seeds better)"),
    (-5.0, 1.0, 2, "beats it (-5.0 ± 1.0; 2 of 3 seeds better)"),
    (0.5, 2.0, 1, "equals it within the seed spread (+0.5 ± 2.0; 1 of 3 seeds better)"),
    (4.0, 1.0, 0, "is worse in every seed (+4.0 ± 1.0; 0 of 3 seeds better)")])
def test_verdict(mean, std, wins, words):
    assert figures.verdict({"mean": mean, "std": std, "wins": wins, "d": [0, 0, 0]}, "d") == words


def test_duration_and_load():
    assert figures.duration(41.26) == "41.3 s"
    assert figures.duration(156.4) == "2 min 36 s"
    assert figures.duration(5923.5) == "1 h 38 min"
    assert figures.load_text(None) == "load average not recorded"
    machine = {"loadavg_start": [5.24, 4, 3], "loadavg_end": [6.0, 5, 4], "cpu_count": 2}
    assert figures.load_text(machine) == "load average 5.2 -> 6.0 (1-minute, start -> end) on 2 CPUs"
    machine["loadavg_mean"] = 4.86
    assert figures.load_text(machine) == "load average 4.9 (mean of the 1-minute value during the run) on 2 CPUs"
    assert figures.load_short(machine) == "load average 4.9"


# ---------------------------------------------------------------- renderers on synthetic results

def _arm(ppl: dict, **extra) -> dict:
    return {"perplexity": ppl, **extra}


def synthetic_reproduce() -> dict:
    """Two seeds, two teachers (A-1M, B-2M), two held-out domains; numbers chosen by hand."""
    doms = ["d1", "d2"]
    seeds = {"0": {"initial": _arm({"d1": 100.0, "d2": 200.0}), "clm_only": _arm({"d1": 50.0, "d2": 70.0}),
                   "distill_A-1M": _arm({"d1": 40.0, "d2": 60.0}), "distill_B-2M": _arm({"d1": 45.0, "d2": 61.0}),
                   "fusellm_avgce": _arm({"d1": 38.0, "d2": 58.0})},
             "1": {"initial": _arm({"d1": 102.0, "d2": 198.0}), "clm_only": _arm({"d1": 52.0, "d2": 72.0}),
                   "distill_A-1M": _arm({"d1": 42.0, "d2": 62.0}), "distill_B-2M": _arm({"d1": 44.0, "d2": 66.0}),
                   "fusellm_avgce": _arm({"d1": 40.0, "d2": 64.5})}}
    for row in seeds.values():
        for arm, entry in row.items():
            if arm != "initial":
                entry["tokens_per_s"] = 1000.0
    from fusekernels.recipes.reproduce import _summary, paired_differences

    results = {"domains": doms, "train_domains": ["T"], "teachers": ["A-1M", "B-2M"], "command": "fk reproduce",
               "config": {"seeds": 2, "block_size": 8, "steps": 10, "batch_size": 2, "lam": 0.5, "lr": 0.01},
               "teacher_domains": {t: {d: {"nats_per_byte": v, "nats_per_token": 2 * v, "tokens": 5}
                                       for d, v in zip(["T (train)", *doms], vals)}
                                   for t, vals in (("A-1M", (1.0, 0.5, 0.9)), ("B-2M", (0.8, 0.6, 0.7)))},
               "student_table": {"blocks": {"T": 10}, "eval_blocks": {"d1": 2, "d2": 2}, "seeds": seeds,
                                 "choices": {"sequence": {"T": {"A-1M": 0.25, "B-2M": 0.7, "none": 0.05}}},
                                 "summary": _summary(seeds, doms)},
               "total_seconds": 125.0}
    results["paired"] = paired_differences(results)
    return results


def test_reproduce_tables_do_not_depend_on_the_json_key_order():
    results = synthetic_reproduce()
    text = figures.reproduce_results(results)
    assert "| d1 | 0.500 (1.00) | 0.600 (1.20) | A-1M |" in text
    assert "| d2 | 0.900 (1.80) | 0.700 (1.40) | B-2M |" in text
    # distill_A-1M: d1 (40, 42), d2 (60, 62), mean over domains (50, 52)
    assert "| distill_A-1M | 41.00 ± 1.41 | 61.00 ± 1.41 | 51.00 ± 1.41 | 1000 |" in text
    rows = [line.split(" | ")[0] for line in text.splitlines() if line.endswith(("| 1000 |", "| – |"))]
    assert rows == ["| initial", "| clm_only", "| distill_A-1M", "| distill_B-2M", "| fusellm_avgce"]
    # paired against the best single teacher (A): seed 0 48 - 50 = -2, seed 1 52.25 - 52 = +0.25
    assert "| fusellm_avgce | -2.00, +0.25 | -0.88 ± 1.59 | 1/2 |" in text
    shuffled = json.loads(json.dumps(results, sort_keys=True))   # as saved: keys sorted
    for table in (shuffled["student_table"]["summary"], shuffled["teacher_domains"]):
        items = list(table.items())
        random.Random(0).shuffle(items)
        table.clear()
        table.update(items)
    assert figures.reproduce_results(shuffled) == text


def test_reproduce_findings_and_readme_numbers():
    results = synthetic_reproduce()
    findings = figures.reproduce_findings(results)
    assert ("`fusellm_avgce`, mean held-out perplexity over the 2 domains 50.1 vs 51.0 (-1.7%), paired difference "
            "-0.9 ± 1.6 (1 of 2 seeds better); best row on d1 (d2: 61 vs 61)") in findings
    assert "sequence level, T: B 70.0%, A 25.0%" in findings
    assert figures.readme_reproduce_findings(results) == (
        "Against the best single teacher (`distill_A-1M`), on the mean held-out perplexity over domains: "
        "`fusellm_avgce` equals it within the seed spread (-0.9 ± 1.6; 1 of 2 seeds better).")
    readme = figures.readme_reproduce(results)
    assert "2 min 5 s wall, load average not recorded" in readme
    assert "| fusellm_avgce | 39.00 ± 1.41 | 61.25 ± 4.60 | 50.12 ± 3.01 | -0.88 ± 1.59 (1/2) |" in readme


def test_readme_headline():
    results = synthetic_reproduce()
    # fusellm_avgce: mean over domains (48 + 52.25) / 2 = 50.125; distill_A-1M (50 + 52) / 2 = 51
    assert figures.readme_headline(results) == (
        "`fusellm_avgce` reaches a mean held-out perplexity of 50.1 against 51.0 for the best single teacher "
        "(`distill_A-1M`): -0.9 ± 1.6 paired, 1 of 2 seeds better.")


def synthetic_demo_run(cache: str, seconds: float, load: float) -> dict:
    teachers = [{"name": "A-1M", "cache": "computed" if cache == "cold" else "reused", "tokens": 90, "seconds": 3.0,
                 "coverage": 0.9}, {"name": "B-2M", "cache": "computed" if cache == "cold" else "reused",
                                    "tokens": 80, "seconds": 4.0, "coverage": 0.75}]
    curve = [{"step": 5, "loss": 3.0, "clm_loss": 4.0, "fusion_loss": 2.0}]
    return {"config": {"train_docs": 4, "verses_per_doc": 2, "eval_docs": 1, "block_size": 16, "k": 3, "steps": 5,
                       "batch_size": 2, "lr": 0.01, "lam": 0.5, "fusion": "mince", "loss_type": "kl",
                       "method": "byte_span", "fallback": "absent", "num_layers": 1, "hidden_size": 8},
            "teachers": ["A-1M", "B-2M"], "cache": cache, "timings": {"load_s": 1.0, "gemma_gguf": "reused"},
            "pipeline": {"texts": 6, "student_positions": 100, "teachers": teachers},
            "data": {"train_blocks": 6, "eval_blocks": 1, "block_size": 16},
            "mince_choices": {"A-1M": 0.6, "B-2M": 0.1, "none": 0.3},
            "runs": {"fusion (mince)": {"eval_perplexity": 90.0, "seconds": 2.0, "tokens_per_s": 80.0, "curve": curve},
                     "clm_only": {"eval_perplexity": 100.0, "seconds": 1.0, "tokens_per_s": 160.0,
                                  "curve": [{"step": 5, "loss": 3.5}]}},
            "initial_eval_perplexity": 1000.0, "total_seconds": seconds, "cpu_seconds": 2 * seconds,
            "student_parameters": 1_500_000, "stage_seconds": {"load": 1.0, "extract A-1M": 3.0},
            "machine": {"cpu_count": 2, "torch_threads": 2, "loadavg_start": [load, 0, 0],
                        "loadavg_end": [load + 1, 0, 0], "loadavg_mean": load + 0.5, "loadavg_max": load + 2,
                        "loadavg_samples": 9, "loadavg_every_s": 5.0, "versions": {"torch": "9.9"}}}


def test_demo_renderers():
    demo = {"cold": synthetic_demo_run("cold", 532.0, 5.2), "warm": synthetic_demo_run("warm", 61.0, 1.0)}
    line = figures.demo_quickstart(demo)
    assert line.startswith("first run 8 min 52 s at load average 5.7 (mean of the 1-minute value during the run) on "
                           "2 CPUs, Gemma")
    assert "second run 1 min 1 s at load average 1.5, teacher" in line
    assert "fusion 90.0, CLM-only 100.0; MinCE chose A on 60.0% and B on 10.0% of the positions" in line
    text = figures.demo_results(demo)
    assert ("| first (cold) | A outputs computed, B outputs computed, Gemma GGUF reused | 8 min 52 s | 17 min 44 s "
            "| 5.7 (7.2) |") in text
    assert "| extract A-1M | 3.0 | 3.0 |" in text and "1.5M parameters" in text
    assert "6 texts after the split -> 100 student tokens -> 6 training blocks, 1 held-out blocks" in text
    assert "| 5 | 3.000 | 4.000 | 2.000 | 3.500 |" in text
    assert "fusion **90.00**, CLM only **100.00** (-10.0% with fusion; one seed); the warm run gave the same" in text
    warm = copy.deepcopy(demo)
    warm["warm"]["runs"]["clm_only"]["eval_perplexity"] = 101.0
    assert "the warm run gave initial 1000.00, fusion (mince) 90.00, clm_only 101.00" in figures.demo_results(warm)


def test_record_demo_merges_a_cold_and_a_warm_run(tmp_path):
    for name, cache in (("cold", "cold"), ("warm", "warm")):
        run = synthetic_demo_run(cache, 10.0, 1.0)
        run["config"]["out"], run["out"] = f"/somewhere/{name}", f"/somewhere/{name}"
        (tmp_path / name).mkdir()
        (tmp_path / name / "demo_results.json").write_text(json.dumps(run))
    merged = figures.record_demo(tmp_path / "cold", tmp_path / "warm", tmp_path / "demo.json")
    saved = json.loads((tmp_path / "demo.json").read_text())
    assert saved == merged and "/somewhere" not in json.dumps(saved) and saved["warm"]["cache"] == "warm"
    with pytest.raises(ValueError, match="teacher caches were 'warm', not 'cold'"):
        figures.record_demo(tmp_path / "warm", tmp_path / "warm", tmp_path / "demo.json")
    with pytest.raises(FileNotFoundError, match="demo_results.json not found"):
        figures.record_demo(tmp_path, tmp_path / "warm", tmp_path / "demo.json")
