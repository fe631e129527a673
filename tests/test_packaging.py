"""Packaging metadata, extras and optional-dependency messages (the build itself: .ci/check_packaging.sh)."""
import importlib
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")
from packaging.requirements import Requirement

import fusekernels
from fusekernels._optional import EXTRA_OF_MODULE, MissingExtraError, require

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]
EXTRAS = PROJECT["optional-dependencies"]


def _requirements():
    yield "dependencies", PROJECT["dependencies"]
    for extra, reqs in EXTRAS.items():
        yield extra, reqs


@pytest.mark.parametrize("where,reqs", list(_requirements()), ids=[w for w, _ in _requirements()])
def test_no_exact_torch_pin(where, reqs):
    for text in reqs:
        req = Requirement(text)
        if req.name == "torch":
            ops = {spec.operator for spec in req.specifier}
            assert not ops & {"==", "===", "~=", "<", "<="}, f"{where} pins torch: {text}"


def test_constraints_pin_ci_torch():
    lines = [ln.strip() for ln in (ROOT / "constraints.txt").read_text().splitlines()]
    assert any(re.fullmatch(r"torch==[\d.]+", ln) for ln in lines)


def _mentioned_extras():
    texts = [(ROOT / "README.md").read_text(encoding="utf-8")]
    texts += [p.read_text(encoding="utf-8") for p in (ROOT / "docs").rglob("*.md")]
    texts += [p.read_text(encoding="utf-8") for p in (ROOT / "fusekernels").rglob("*.py")]
    found = set()
    for text in texts:
        for group in re.findall(r"fusekernels\[([a-z0-9_,\- ]+)\]", text):
            found.update(x.strip() for x in group.split(","))
    return found


def test_every_extra_named_anywhere_exists():
    mentioned = _mentioned_extras() | set(EXTRA_OF_MODULE.values())
    assert {"hf", "triton"} <= mentioned
    assert mentioned <= set(EXTRAS), f"extras named but not defined: {mentioned - set(EXTRAS)}"


def test_extra_of_module_matches_the_extras():
    distribution = {"yaml": "pyyaml"}  # import names that differ from the distribution's
    for module, extra in EXTRA_OF_MODULE.items():
        names = {Requirement(r).name.replace("-", "_") for r in EXTRAS[extra]}
        assert distribution.get(module, module) in names or f"{module}[" in str(EXTRAS[extra]), \
            f"{module} is not in [{extra}]"


def test_license_and_typing_metadata():
    assert PROJECT["license"] == "Apache-2.0"
    assert "LICENSE" in PROJECT["license-files"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("Copyright 2026 The fusekernels authors") and "Apache License" in text
    assert "Typing :: Typed" in PROJECT["classifiers"]
    assert (ROOT / "fusekernels" / "py.typed").is_file()
    assert not any(c.startswith("License ::") for c in PROJECT["classifiers"])  # PEP 639: expression only


def test_version_comes_from_metadata():
    try:
        installed = importlib.metadata.version("fusekernels")
    except importlib.metadata.PackageNotFoundError:
        assert fusekernels.__version__ == "0+unknown"
    else:
        assert fusekernels.__version__ == installed == PROJECT["version"]


def test_build_carries_the_native_sources():
    """setup.py is the build entry: setuptools' build_ext drives CMakeLists.txt over csrc/ with
    pybind11 and CMake from the build requirements (no torch), and the sdist carries the sources."""
    build = PYPROJECT["build-system"]
    assert build["build-backend"] == "setuptools.build_meta"
    assert {Requirement(r).name for r in build["requires"]} == {"setuptools", "pybind11", "cmake"}
    setup_py = (ROOT / "setup.py").read_text(encoding="utf-8")
    assert 'CMakeExtension("fusekernels._C")' in setup_py and "FUSEKERNELS_MODULE_DIR" in setup_py
    cmake = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "csrc/core/*.cpp" in cmake and "FUSEKERNELS_MODULE_DIR" in cmake and "SKBUILD" not in cmake
    manifest = (ROOT / "MANIFEST.in").read_text(encoding="utf-8").splitlines()
    assert "graft csrc" in manifest and any(line.startswith("include CMakeLists.txt") for line in manifest)
    assert "global-exclude *.so *.py[cod] __pycache__" in manifest


# ------------------------------------------------------------------ optional imports
def _block(monkeypatch, *modules):
    """Make ``import m`` fail for each module (and forget ours that imported them)."""
    for name in list(sys.modules):
        if any(name == m or name.startswith(m + ".") for m in modules):
            monkeypatch.setitem(sys.modules, name, None)
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)
    for name in [n for n in sys.modules if n.startswith("fusekernels.") and n.count(".") >= 2]:
        if name.split(".")[1] in ("integration", "pipeline", "kernels"):
            monkeypatch.delitem(sys.modules, name)


def test_require_names_the_extra(monkeypatch):
    _block(monkeypatch, "datasets")
    with pytest.raises(MissingExtraError, match=r"'datasets' \(needed by x\): pip install 'fusekernels\[hf\]'"):
        require("datasets", "x")


def test_require_leaves_other_missing_modules_alone():
    with pytest.raises(ModuleNotFoundError) as info:
        require("fusekernels_no_such_module_abc")
    assert not isinstance(info.value, MissingExtraError)


def test_pipeline_function_names_the_extra(monkeypatch, tmp_path):
    _block(monkeypatch, "datasets")
    from fusekernels.pipeline.io import load_rows

    with pytest.raises(MissingExtraError, match=r"fusekernels\[hf\]"):
        load_rows(tmp_path)


def test_integration_names_the_extra(monkeypatch):
    _block(monkeypatch, "transformers")
    integration = importlib.import_module("fusekernels.integration")
    with pytest.raises(MissingExtraError, match=r"FusionTrainer.*fusekernels\[hf\]"):
        integration.FusionTrainer  # noqa: B018


def test_cli_names_the_extra(monkeypatch, tmp_path, capsys):
    from fusekernels.cli import EXIT_USER_ERROR, main

    _block(monkeypatch, "datasets")
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "a"}\n')
    code = main(["pack", "--data", str(data), "--block-size", "8", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_USER_ERROR
    assert len(err.splitlines()) == 1 and "pip install 'fusekernels[hf]'" in err, err


def test_no_citation_of_unshipped_spec_sections():
    pattern = re.compile(r"spec(?:ification)?(?:'s)?\s+(?:sections?|§)\s*\d|sections?\s+\d+\s*(?:-\s*\d+)?\)"
                         r"|\bthe spec\b|\bspec's\b|fusellm-algorithm", re.I)
    offenders = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")),
                 *sorted((ROOT / "fusekernels").rglob("*.py"))]:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_ci_runs_the_readme_quick_start_verbatim():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Quick start\s+```bash\n(.*?)```", readme, re.S).group(1)
    commands = [ln.strip() for ln in block.splitlines() if ln.strip()]
    assert len(commands) == 2
    ci = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    for command in commands:
        assert any(line == command or line.startswith(command + " ") for line in ci), command


def test_asset_helpers_name_the_extra():
    from fusekernels.tokenization.assets import AssetUnavailable, _require

    with pytest.raises(AssetUnavailable, match=r"pip install 'fusekernels\[assets\]'"):
        _require("fusekernels_no_such_module_abc", "reading x")


def test_every_required_module_has_an_extra():
    required = set()
    for path in (ROOT / "fusekernels").rglob("*.py"):
        required.update(m.split(".")[0] for m in re.findall(r"\brequire\(\s*[\"']([\w.]+)[\"']",
                                                             path.read_text(encoding="utf-8")))
    assert {"datasets", "transformers"} <= required
    assert required <= set(EXTRA_OF_MODULE), f"require() of modules without an extra: {required - set(EXTRA_OF_MODULE)}"


def test_cli_version(capsys):
    from fusekernels.cli import main

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"fusekernels {fusekernels.__version__}"


def test_every_extra_is_documented():
    table = (ROOT / "docs" / "install.md").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for extra in EXTRAS:
        assert f"| `{extra}` |" in table, f"extra {extra!r} missing from docs/install.md"
        assert f"`{extra}`" in readme, f"extra {extra!r} missing from the README"
