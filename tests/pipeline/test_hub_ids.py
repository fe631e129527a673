"""Hub model ids are accepted wherever a model path is: resolved to the snapshot folder that
``from_pretrained`` would use (here a Hub cache built in the test, read offline), and refused with
one clear line when offline and not cached."""
import json

import pytest

from fusekernels.cli import main
from fusekernels.pipeline.io import hub_model_id, load_model, load_tokenizer, resolve_model

from .helpers import make_char_tokenizer, make_tiny_llama

pytest.importorskip("huggingface_hub")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A Hub cache holding ``fk-test/tiny-llama`` (as a download leaves it), offline mode on."""
    import huggingface_hub.constants as constants

    root = tmp_path / "hub"
    repo = root / "models--fk-test--tiny-llama"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    tok = make_char_tokenizer()
    make_tiny_llama(len(tok), seed=3, max_positions=64).save_pretrained(snapshot)
    tok.save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return snapshot


def test_model_ids_are_told_from_paths(tmp_path):
    assert hub_model_id("org/name") == "org/name" and hub_model_id("gpt2") == "gpt2"
    assert hub_model_id(str(tmp_path)) is None  # an existing path
    assert hub_model_id(str(tmp_path / "missing" / "model")) is None  # a path, not an id
    assert hub_model_id("teacher.gguf") is None and hub_model_id("a/b/c") is None


def test_cached_id_resolves_offline(hub_cache, tmp_path, capsys):
    assert resolve_model("fk-test/tiny-llama") == hub_cache
    model, tok = load_model("fk-test/tiny-llama"), load_tokenizer("fk-test/tiny-llama")
    assert model.config.vocab_size == len(tok) == len(make_char_tokenizer())
    (tmp_path / "docs.jsonl").write_text(json.dumps({"text": "In the beginning."}) + "\n")
    argv = ["extract", "--model", "fk-test/tiny-llama", "--data", str(tmp_path / "docs.jsonl"), "--k", "2",
            "--max-length", "16", "--out", str(tmp_path / "out")]
    assert main(argv) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.startswith("extract: 1 sequences")


def test_uncached_id_offline_is_one_clear_line(hub_cache, tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match=r"model not found: 'fk-test/absent' is no local path, and as a Hub "
                                                r"model id it is not in the local Hub cache and HF_HUB_OFFLINE is set"):
        resolve_model("fk-test/absent")
    (tmp_path / "docs.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    for argv in (["extract", "--model", "fk-test/absent", "--data", str(tmp_path / "docs.jsonl")],
                 ["merge", "--targets", "fk-test/absent", "--method", "linear"]):
        assert main(argv + ["--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "HF_HUB_OFFLINE is set" in err and "Traceback" not in err
    with pytest.raises(FileNotFoundError, match="neither an existing path nor one of the packaged tokenizers"):
        load_tokenizer("fk-test/absent")
    assert not (tmp_path / "out").exists()


def test_unreachable_hub_is_one_clear_line(monkeypatch):
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'huggingface.co'\n(more detail on a second line)")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    with pytest.raises(FileNotFoundError) as info:
        resolve_model("fk-test/tiny-llama")
    assert str(info.value) == ("model not found: 'fk-test/tiny-llama' is no local path, and as a Hub model id it "
                               "cannot be fetched (ConnectionError: Failed to resolve 'huggingface.co')")
