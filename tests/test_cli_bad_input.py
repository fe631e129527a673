"""The command line's bad-input table: every subcommand x (missing input, truncated input, read-only
output, full disk, existing output) gives one error line (no traceback) and exit status 2, before
any work where it can be known upfront, and never modifies an input or leaves a partial output.

Read-only and full-disk outputs are real file systems (a read-only and a filled tmpfs, mounted
when the tests may mount; root ignores permission bits, so chmod cannot simulate them); without
mount rights those cases are skipped and an in-process ENOSPC on save still runs.
"""
import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fusekernels.cli import main  # noqa: E402
from tests.pipeline.helpers import make_char_tokenizer, make_tiny_llama  # noqa: E402

TEXTS = ["In the beginning God created the heaven and the earth.",
         "And the earth was without form, and void; and darkness was upon the face of the deep.",
         "And God said, Let there be light: and there was light."] * 2


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """Valid inputs of every subcommand: a tiny model + tokenizer, texts and each step's output."""
    root = tmp_path_factory.mktemp("badinput")
    tok = make_char_tokenizer()
    make_tiny_llama(len(tok), seed=1, max_positions=64).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    with open(root / "docs.jsonl", "w") as fh:
        for text in TEXTS:
            fh.write(json.dumps({"text": text}) + "\n")
    run = lambda *a: main([str(x) for x in a])  # noqa: E731
    assert run("split", "--data", root / "docs.jsonl", "--tokenizer", root / "model", "--block-size", 64,
               "--out", root / "split") == 0
    assert run("extract", "--model", root / "model", "--data", root / "split", "--k", 2, "--max-length", 32,
               "--out", root / "topk") == 0
    assert run("align", "--base", root / "topk", "--base-tokenizer", root / "model", "--teacher", root / "topk",
               "--teacher-tokenizer", root / "model", "--out", root / "aligned") == 0
    assert run("pack", "--data", root / "aligned", "--block-size", 16, "--out", root / "packed") == 0
    return root


# name -> (argv builder over the input paths, the input that the missing / truncated cases replace)
COMMANDS = {
    "split": (lambda p: ["--data", p["docs"], "--tokenizer", p["model"], "--block-size", 64], "docs"),
    "extract": (lambda p: ["--model", p["model"], "--data", p["split"], "--k", 2, "--max-length", 32], "model"),
    "vocab-map": (lambda p: ["--base-tokenizer", p["model"], "--blend-tokenizer", p["model"]], "model"),
    "align": (lambda p: ["--base", p["topk"], "--base-tokenizer", p["model"], "--teacher", p["topk"],
                         "--teacher-tokenizer", p["model"]], "topk"),
    "pack": (lambda p: ["--data", p["aligned"], "--block-size", 16], "aligned"),
    "merge": (lambda p: ["--targets", p["model"], p["model"], "--method", "linear", "--weights", 0.5, 0.5], "model"),
    "prepare": (lambda p: ["--data", p["docs"], "--student-tokenizer", p["model"], "--teacher", p["model"],
                           "--block-size", 64, "--k", 2, "--no-cache"], "docs"),
    "train": (lambda p: ["--model", p["model"], "--data", p["packed"], "--steps", 1, "--batch-size", 1, "--cpu",
                         "--logging-steps", 1], "packed"),
}
OUT_NAME = {"vocab-map": "map.npz"}
DAMAGED_FILE = {"vocab-map": "tokenizer.json"}  # the file a command reads from its main input (default: largest)
INPUTS = ("docs", "model", "split", "topk", "aligned", "packed")


def _inputs(ws):
    return {name: ws / ("docs.jsonl" if name == "docs" else name) for name in INPUTS}


def _snapshot(paths):
    """Every file's bytes and mtime under the inputs (to prove they are untouched)."""
    state = {}
    for path in paths:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for f in files:
            st = f.stat()
            state[str(f)] = (f.read_bytes(), st.st_mtime_ns)
    return state


def _damage(src: Path, dst: Path, name=None) -> Path:
    """A damaged copy of an input: a broken last JSON line, or one of its files (``name``, default
    the largest arrow / weights file) cut in half."""
    if src.is_file():
        dst.write_text(src.read_text() + '{"text": "unterminated\n')
        return dst
    shutil.copytree(src, dst)
    largest = dst / name if name else max((p for p in dst.rglob("*") if p.is_file() and not p.name.startswith(
        "cache-")), key=lambda p: p.stat().st_size)
    largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 2])
    return dst


def _run_and_check(cmd, argv, out, capsys, inputs):
    before = _snapshot(inputs)
    capsys.readouterr()
    code = main([cmd] + [str(a) for a in argv] + ["--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(f"fusekernels {cmd}: error:")]
    assert len(lines) == 1, err[-2000:]
    assert "\n" not in lines[0]
    assert _snapshot(inputs) == before, "an input was modified"
    return lines[0]


def _mount_tmpfs(path: Path, options: str):
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or done.returncode})")


@pytest.fixture
def no_work(monkeypatch):
    """Loading any input counts as starting the work: output checks must come first."""
    import fusekernels.pipeline.io as io

    def refuse(*args, **kwargs):
        raise AssertionError("the command started its work before checking --out")

    for name in ("load_rows", "load_tokenizer", "load_model"):
        monkeypatch.setattr(io, name, refuse)


@pytest.fixture
def mounts():
    made = []

    def mount(path, options):
        _mount_tmpfs(path, options)
        made.append(path)
        return path

    yield mount
    for path in reversed(made):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.mark.parametrize("cmd", sorted(COMMANDS))
def test_missing_input(ws, tmp_path, capsys, cmd):
    build, key = COMMANDS[cmd]
    paths = _inputs(ws)
    paths[key] = tmp_path / "does-not-exist"
    out = tmp_path / OUT_NAME.get(cmd, "out")
    line = _run_and_check(cmd, build(paths), out, capsys, [p for k, p in paths.items() if k != key])
    # (extract names the missing model, not a missing tokenizer, although it loads the tokenizer first)
    assert ("neither an existing path" if cmd == "vocab-map" else "not found") in line
    assert not out.exists()


@pytest.mark.parametrize("cmd", sorted(COMMANDS))
def test_truncated_input(ws, tmp_path, capsys, cmd):
    build, key = COMMANDS[cmd]
    paths = _inputs(ws)
    paths[key] = _damage(paths[key], tmp_path / f"damaged-{paths[key].name}", DAMAGED_FILE.get(cmd))
    out = tmp_path / OUT_NAME.get(cmd, "out")
    line = _run_and_check(cmd, build(paths), out, capsys, list(paths.values()))
    assert "damaged" in line and "damaged-" in line  # names the bad file or folder
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("cmd", sorted(COMMANDS))
def test_existing_output(ws, tmp_path, capsys, no_work, cmd):
    build, _ = COMMANDS[cmd]
    out = tmp_path / OUT_NAME.get(cmd, "out")
    if cmd == "vocab-map":
        out.write_bytes(b"keep me")
    else:
        out.mkdir()
        (out / "keep.txt").write_text("keep me")
    line = _run_and_check(cmd, build(_inputs(ws)), out, capsys, list(_inputs(ws).values()) + [out])
    assert "not empty" in line or "already exists" in line


@pytest.mark.parametrize("cmd", sorted(COMMANDS))
def test_output_overlapping_an_input(ws, tmp_path, capsys, no_work, cmd):
    if cmd == "vocab-map":
        pytest.skip("vocab-map writes one file; an existing file is refused by test_existing_output")
    build, key = COMMANDS[cmd]
    paths = _inputs(ws)
    if paths[key].is_file():
        pytest.skip("the main input is a file")
    out = paths[key] / "inside"
    line = _run_and_check(cmd, build(paths), out, capsys, list(paths.values()))
    assert "overlaps the input" in line
    assert not out.exists()


@pytest.mark.parametrize("cmd", sorted(COMMANDS))
def test_read_only_output(ws, tmp_path, capsys, mounts, no_work, cmd):
    build, _ = COMMANDS[cmd]
    ro = mounts(tmp_path / "ro", "ro,size=64k")
    line = _run_and_check(cmd, build(_inputs(ws)), ro / OUT_NAME.get(cmd, "out"), capsys,
                          list(_inputs(ws).values()))
    assert "cannot write" in line


@pytest.mark.parametrize("cmd", sorted(COMMANDS))
def test_full_disk(ws, tmp_path, capsys, mounts, cmd):
    build, _ = COMMANDS[cmd]
    full = mounts(tmp_path / "full", "size=64k")
    with open(full / "filler", "wb") as fh:  # fill it: empty files and folders still fit, data does not
        try:
            fh.write(b"\0" * (1 << 20))
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    out = full / OUT_NAME.get(cmd, "out")
    line = _run_and_check(cmd, build(_inputs(ws)), out, capsys, list(_inputs(ws).values()))
    assert "No space left" in line
    left = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    # nothing half-written under the final name (extract keeps its resume metadata only)
    assert left in ([], ["extract_meta.json"]) and not (out.is_file())
    assert sorted(p.name for p in full.iterdir()) == ["filler"] + (["out"] if out.is_dir() else [])


@pytest.mark.parametrize("cmd", ["split", "align", "pack"])
def test_disk_full_while_saving_in_process(ws, tmp_path, capsys, monkeypatch, cmd):
    """Without mount rights: ENOSPC raised by the dataset writer itself after a partial write."""
    import datasets

    def full(self, path, *args, **kwargs):
        Path(path, "data-00000-of-00001.arrow").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", full)
    build, _ = COMMANDS[cmd]
    out = tmp_path / "out"
    line = _run_and_check(cmd, build(_inputs(ws)), out, capsys, list(_inputs(ws).values()))
    assert "No space left" in line
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []


@pytest.mark.parametrize("cmd", ["extract", "align", "pack", "train"])
def test_successful_runs_leave_inputs_untouched(ws, tmp_path, capsys, cmd):
    """datasets would write map cache files next to a loaded dataset's arrow files (the inputs)."""
    build, key = COMMANDS[cmd]
    paths = _inputs(ws)
    paths[key] = tmp_path / f"copy-{key}"
    shutil.copytree(ws / key, paths[key], ignore=shutil.ignore_patterns("cache-*"))
    before = _snapshot(paths.values())
    assert main([cmd] + [str(a) for a in build(paths)] + ["--out", str(tmp_path / "out")]) == 0
    assert _snapshot(paths.values()) == before


def test_demo_refuses_an_existing_output_before_any_work(tmp_path, capsys, monkeypatch):
    import fusekernels.recipes.demo as demo

    monkeypatch.setattr(demo, "run_demo", lambda *a, **k: pytest.fail("the demo started before checking --out"))
    (tmp_path / "keep.txt").write_text("keep me")
    assert main(["demo", "--out", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("name, content", [("list.json", b'["a", "b"]'), ("broken.json", b'{"a": '),
                                           ("truncated.npz", None)])
def test_damaged_vocab_map(ws, tmp_path, capsys, name, content):
    if content is None:
        assert main(["vocab-map", "--base-tokenizer", str(ws / "model"), "--blend-tokenizer", str(ws / "model"),
                     "--out", str(tmp_path / "good.npz")]) == 0
        raw = (tmp_path / "good.npz").read_bytes()
        content = raw[: len(raw) // 2]
    (tmp_path / name).write_bytes(content)
    paths = _inputs(ws)
    argv = ["--base", paths["topk"], "--base-tokenizer", paths["model"], "--teacher", paths["topk"],
            "--teacher-tokenizer", paths["model"], "--method", "compat_soft", "--vocab-map", tmp_path / name]
    line = _run_and_check("align", argv, tmp_path / "out", capsys, list(paths.values()) + [tmp_path / name])
    assert "damaged" in line and name in line


# ------------------------------------------------------------------ second hostile-user round
def _one_error_line(cmd, code, err):
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(f"fusekernels {cmd}: error:")]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


def test_ctrl_c_swallowed_by_a_finaliser_still_stops_extract(ws, tmp_path, capsys, monkeypatch):
    """SIGINT arriving while a finaliser runs (progress bars, Arrow writers and generators run them
    during every shard write): Python prints "Exception ignored" and goes on, so ``prepare`` once
    finished 119 s after a Ctrl-C with exit 0. The command now stops at the next safe point."""
    import signal

    import datasets

    real_save = datasets.Dataset.save_to_disk

    class Finaliser:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            sum(range(1000))  # the handler runs here: its KeyboardInterrupt cannot leave __del__

    def save(self, path, *args, **kwargs):
        real_save(self, path, *args, **kwargs)
        finaliser = Finaliser()
        del finaliser

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", save)
    argv = COMMANDS["extract"][0](_inputs(ws))
    code = main(["extract", *map(str, argv), "--out", str(tmp_path / "out")])
    assert code == 130, capsys.readouterr().err[-2000:]
    assert "interrupted" in capsys.readouterr().err
    assert not list((tmp_path / "out").glob("shard-*"))  # the shard being written when Ctrl-C came is dropped
    monkeypatch.setattr(datasets.Dataset, "save_to_disk", real_save)
    assert main(["extract", *map(str, argv), "--out", str(tmp_path / "out")]) == 0  # resumes; nothing left pending


def test_chat_template_refusal_is_one_line(ws, tmp_path, capsys):
    (tmp_path / "chat.jsonl").write_text("\n".join(json.dumps({"messages": m}) for m in [
        [{"role": "user", "content": "Who?"}, {"role": "assistant", "content": "God."}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who?"}]]))
    (tmp_path / "t.jinja").write_text(
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system messages') }}"
        "{% endif %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}")
    argv = ["prepare", "--data", tmp_path / "chat.jsonl", "--student-tokenizer", ws / "model", "--teacher",
            ws / "model", "--chat-template", tmp_path / "t.jinja", "--student-chat-template", tmp_path / "t.jinja",
            "--block-size", 32, "--k", 2, "--no-cache", "--out", tmp_path / "out"]
    code = main([str(a) for a in argv])
    line = _one_error_line("prepare", code, capsys.readouterr().err)
    assert "row 1" in line and "no system messages" in line
    assert not (tmp_path / "out").exists()


def test_merge_of_different_architectures_is_one_line_before_work(tmp_path, capsys):
    """mergekit's own refusal ("Must specify --allow-crimes ...") was a raw traceback with exit 1."""
    pytest.importorskip("mergekit")
    from transformers import MistralConfig, MistralForCausalLM

    make_tiny_llama(64, seed=0).save_pretrained(tmp_path / "llama")
    mistral = MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2)
    MistralForCausalLM(mistral).save_pretrained(tmp_path / "mistral")
    code = main(["merge", "--method", "slerp", "--targets", str(tmp_path / "llama"), str(tmp_path / "mistral"),
                 "--out", str(tmp_path / "out")])
    line = _one_error_line("merge", code, capsys.readouterr().err)
    assert "LlamaForCausalLM" in line and "MistralForCausalLM" in line and "one architecture" in line
    assert not (tmp_path / "out").exists()
