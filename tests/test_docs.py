"""The API reference builds in strict mode, and a broken reference in a docstring fails it."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs")
pytest.importorskip("mkdocstrings_handlers.python")

ROOT = Path(__file__).resolve().parents[1]


def _copy_tree(dest: Path) -> Path:
    shutil.copytree(ROOT / "docs", dest / "docs")
    shutil.copy(ROOT / "mkdocs.yml", dest / "mkdocs.yml")
    shutil.copytree(ROOT / "fusekernels", dest / "fusekernels", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    return dest


def _build(tree: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tree / "site")],
                          cwd=tree, capture_output=True, text=True, timeout=300)


def test_reference_builds_strictly(tmp_path):
    tree = _copy_tree(tmp_path)
    run = _build(tree)
    assert run.returncode == 0, run.stderr[-3000:]
    page = (tree / "site" / "api" / "align" / "index.html").read_text(encoding="utf-8")
    assert 'id="fusekernels.align.levenshtein_batch"' in page
    assert ":func:" not in page  # the docstrings' roles became links


BROKEN = ["See :func:`fusekernels.align.no_such_function`.", "Args:\n        no_such_param: x"]


@pytest.mark.parametrize("broken", BROKEN)
def test_broken_reference_fails_the_build(tmp_path, broken):
    tree = _copy_tree(tmp_path)
    (tree / "fusekernels" / "docprobe.py").write_text(
        f'def probe(a):\n    """Probe.\n\n    {broken}\n    """\n', encoding="utf-8")
    with open(tree / "docs" / "api" / "align.md", "a", encoding="utf-8") as page:
        page.write("\n::: fusekernels.docprobe\n")
    run = _build(tree)
    assert run.returncode != 0
    assert "no_such" in run.stderr
