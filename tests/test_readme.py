"""The README's Python examples run as written (blocks starting with '# not run' are skipped)."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
          if not b.startswith("# not run")]


def _title(block: str) -> str:
    return block.splitlines()[0][:40]


@pytest.mark.parametrize("block", BLOCKS, ids=[_title(b) for b in BLOCKS])
def test_readme_example_runs(block):
    if "fusekernels.tokenization.assets" in block:
        pytest.importorskip("mistral_common")
    exec(compile(block, str(README), "exec"), {})


def test_readme_has_examples():
    assert len(BLOCKS) >= 3


# ---------------------------------------------------------------- every code block, by language
# A block is marked as GPU-only by an HTML comment line "<!-- gpu -->" right before its fence
# (blank lines between allowed): only there may mixed precision be switched on.
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
GPU_MARK = re.compile(r"<!--\s*gpu\s*-->\s*$", re.I)
# bf16 switched on: `bf16: true` (YAML), `bf16=True` (Python), `--bf16` / `--bf16 true` (command line)
BF16_ON = re.compile(r"\bbf16\s*[:=]\s*(?:true|1|yes)\b|--bf16\b(?![\s=]*(?:false|0|no)\b)", re.I)


def code_blocks(text: str) -> list[tuple[str, str, bool]]:
    """``(language, code, gpu)`` of every fenced block of ``text``; ``gpu``: marked GPU-only."""
    blocks = []
    for match in FENCE.finditer(text):
        before = text[:match.start()].rstrip().splitlines()
        blocks.append((match.group(1), match.group(2), bool(before) and bool(GPU_MARK.search(before[-1]))))
    return blocks


def bf16_outside_gpu_blocks(text: str) -> list[str]:
    """The lines of non-GPU blocks that switch bf16 on."""
    return [line for _, code, gpu in code_blocks(text) if not gpu
            for line in code.splitlines() if BF16_ON.search(line)]


def test_bf16_rule_catches_and_allows():
    cpu = "```yaml\nmodel: m\nbf16: true\n```\n```bash\nfusekernels train --bf16 false --out x\n```\n"
    gpu = "<!-- gpu -->\n\n```bash\nfusekernels train run.yaml --bf16 true\n```\n"
    assert bf16_outside_gpu_blocks(cpu) == ["bf16: true"]
    assert bf16_outside_gpu_blocks(gpu) == []
    assert bf16_outside_gpu_blocks("```python\nTrainingArguments('o', bf16=True)\n```\n") != []
    assert bf16_outside_gpu_blocks("```bash\nfusekernels train --bf16\n```\n") != []


def test_readme_switches_bf16_on_only_in_gpu_blocks():
    """bf16 fails on a CPU: a block meant to be copied on any machine must not switch it on."""
    assert bf16_outside_gpu_blocks(README.read_text(encoding="utf-8")) == []


YAML_BLOCKS = [code for lang, code, _ in code_blocks(README.read_text(encoding="utf-8")) if lang in ("yaml", "yml")]


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=[_title(b) for b in YAML_BLOCKS])
def test_readme_yaml_block_loads(block, tmp_path):
    """Every YAML block parses; a `fusekernels train` config also passes the command's option
    checks (known keys, value types, TrainingArguments' own checks on this machine)."""
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load(block)
    assert isinstance(config, dict) and config
    if "fusekernels train" in block.splitlines()[0]:
        pytest.importorskip("transformers")
        from fusekernels.cli.train import parse_train_args

        path = tmp_path / "run.yaml"
        path.write_text(block, encoding="utf-8")
        model_args, data_args, fusion_args, training_args = parse_train_args([str(path)])
        assert model_args.model == config["model"] and data_args.data == config["data"]
        assert training_args.max_steps == config["max_steps"] and not training_args.bf16


def test_readme_has_a_train_yaml_block():
    assert any("fusekernels train" in b.splitlines()[0] for b in YAML_BLOCKS)
