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
