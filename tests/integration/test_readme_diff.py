"""The README's "adding fusion to an existing Trainer script" diff: both scripts (before and after)
run as written on a tiny student, and the diff changes at most 10 lines."""
import re
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("datasets")
from datasets import Dataset  # noqa: E402

from tests.integration.helpers import synthetic_examples, tiny_llama  # noqa: E402
from tests.pipeline.helpers import make_char_tokenizer  # noqa: E402

README = Path(__file__).resolve().parents[2] / "README.md"


def _scripts():
    block = re.search(r"```diff\n(.*?)```", README.read_text(encoding="utf-8"), re.S).group(1)
    before, after = [], []
    for line in block.splitlines():
        mark, code = (line[:1], line[1:]) if line else (" ", "")
        if mark in " -":
            before.append(code)
        if mark in " +":
            after.append(code)
    return "\n".join(before), "\n".join(after), sum(1 for line in block.splitlines() if line[:1] == "+")


def test_readme_diff_adds_fusion_to_a_plain_script(tmp_path, monkeypatch):
    before, after, added = _scripts()
    assert added <= 10 and "attach(trainer)" in after and "FusionLossFunction" not in before
    model = tiny_llama(seed=1)
    model.config.pad_token_id = 1
    model.save_pretrained(tmp_path / "student")
    make_char_tokenizer().save_pretrained(tmp_path / "student")
    examples = synthetic_examples(8, vocab=100, seed=2)
    Dataset.from_list(examples).save_to_disk(str(tmp_path / "packed"))
    Dataset.from_list([{"input_ids": e["input_ids"]} for e in examples]).save_to_disk(str(tmp_path / "tokenized"))
    Dataset.from_list([{"input_ids": e["input_ids"]} for e in synthetic_examples(3, vocab=100, seed=4)]).save_to_disk(
        str(tmp_path / "held_out"))
    monkeypatch.chdir(tmp_path)
    results = {}
    for name, script in (("before", before), ("after", after)):
        scope = {}
        exec(compile(script, f"README diff ({name})", "exec"), scope)
        results[name] = scope["trainer"]
        (tmp_path / "out").rename(tmp_path / f"out_{name}")
    logs = [h for h in results["after"].state.log_history if "loss" in h]
    assert logs and {"clm_loss", "fusion_loss", "lam"} <= set(logs[0])
    evals = [h for h in results["after"].state.log_history if "eval_loss" in h]
    assert evals and "eval_perplexity" in evals[-1]
