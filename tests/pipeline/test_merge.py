import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from fusekernels.pipeline.merge import SafetensorsCheckpoint, merge_models, variation_weights

from .helpers import make_tiny_llama


def _base_tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "layer.weight": torch.randn(4, 3, generator=g),
        "layer.bias": torch.randn(5, generator=g),
        "embed.weight": torch.randn(6, 2, generator=g).to(torch.bfloat16),
        "frozen.weight": torch.randn(3, 3, generator=g),
        "position_ids": torch.arange(7),
    }


def _target(base, seed, scale):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in base.items():
        if key in ("position_ids", "frozen.weight"):
            out[key] = value.clone()
        else:
            out[key] = (value.float() + scale * torch.randn(value.shape, generator=g)).to(value.dtype)
    return out


@pytest.fixture()
def checkpoints(tmp_path):
    base = _base_tensors()
    targets = [_target(base, 1, 0.1), _target(base, 2, 0.5), _target(base, 3, 1.0)]
    save_file(base, str(tmp_path / "base.safetensors"))
    paths = []
    for i, target in enumerate(targets):
        folder = tmp_path / f"target{i}"
        folder.mkdir()
        if i == 1:  # one target sharded over two files with an index, the others single files
            keys = sorted(target)
            parts = {"model-00001-of-00002.safetensors": keys[:2], "model-00002-of-00002.safetensors": keys[2:]}
            for name, part in parts.items():
                save_file({k: target[k] for k in part}, str(folder / name))
            weight_map = {k: name for name, part in parts.items() for k in part}
            (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
        else:
            save_file(target, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps({"target": i}))
        paths.append(folder)
    return base, targets, paths, tmp_path / "base.safetensors"


def _hand_varm(base, targets, key, temperature=None):
    ref = base[key].float()
    v = torch.tensor([((t[key].float() - ref) ** 2).mean().item() for t in targets], dtype=torch.float64)
    if temperature:
        w = torch.softmax(v / temperature, 0)
    else:
        w = v / v.sum() if v.sum() > 0 else torch.full_like(v, 1 / len(v))
    merged = sum(float(wi) * t[key].float() for wi, t in zip(w, targets))
    return w, merged.to(base[key].dtype)


@pytest.mark.parametrize("temperature", [None, 0.05])
def test_varm_equals_hand_computation(checkpoints, tmp_path, temperature):
    base, targets, paths, base_path = checkpoints
    out = tmp_path / "merged"
    report = merge_models(paths, out, base=base_path, temperature=temperature, progress=False)
    merged = load_file(str(out / "model.safetensors"))
    assert set(merged) == set(base)
    for key in ("layer.weight", "layer.bias", "embed.weight", "frozen.weight"):
        w, expected = _hand_varm(base, targets, key, temperature)
        assert report.weights[key] == pytest.approx(w.tolist(), rel=1e-6, abs=1e-9)
        assert merged[key].dtype == base[key].dtype
        torch.testing.assert_close(merged[key], expected, rtol=1e-6, atol=1e-6)
    # the most-changed model dominates; an unchanged tensor gets uniform weights
    assert report.weights["layer.weight"][2] > report.weights["layer.weight"][0]
    if temperature is None:
        assert report.weights["frozen.weight"] == pytest.approx([1 / 3] * 3)
    assert torch.equal(merged["position_ids"], base["position_ids"])
    assert json.loads((out / "config.json").read_text()) == {"target": 0}


def test_linear_merge_and_sharded_output(checkpoints, tmp_path):
    base, targets, paths, _ = checkpoints
    out = tmp_path / "linear"
    report = merge_models(paths, out, method="linear", weights=[1, 1, 2], max_shard_size=64, progress=False)
    assert len(report.files) > 1
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(base)
    with SafetensorsCheckpoint(out) as merged:
        for key in ("layer.weight", "embed.weight"):
            expected = (0.25 * targets[0][key].float() + 0.25 * targets[1][key].float()
                        + 0.5 * targets[2][key].float()).to(base[key].dtype)
            torch.testing.assert_close(merged.get(key), expected)


def test_single_file_output(checkpoints, tmp_path):
    base, targets, paths, base_path = checkpoints
    out = tmp_path / "one" / "merged.safetensors"
    merge_models(paths[:2], out, base=base_path, progress=False)
    merged = load_file(str(out))
    _, expected = _hand_varm(base, targets[:2], "layer.weight")
    torch.testing.assert_close(merged["layer.weight"], expected)


def test_variation_weights():
    assert variation_weights([1.0, 3.0]) == pytest.approx([0.25, 0.75])
    assert variation_weights([0.0, 0.0]) == pytest.approx([0.5, 0.5])
    expected = torch.softmax(torch.tensor([0.5, 1.5]), 0).tolist()
    assert variation_weights([1.0, 3.0], temperature=2.0) == pytest.approx(expected)
    with pytest.raises(ValueError, match="temperature"):
        variation_weights([1.0], temperature=0)
    with pytest.raises(ValueError, match="finite"):
        variation_weights([float("nan"), 1.0])


def test_merged_llama_loads_with_transformers(tmp_path):
    from transformers import LlamaForCausalLM

    base = make_tiny_llama(64, seed=0)
    base.save_pretrained(tmp_path / "base")
    paths = []
    for i in (1, 2):
        model = make_tiny_llama(64, seed=0)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * i * torch.randn_like(p))
        model.save_pretrained(tmp_path / f"t{i}")
        paths.append(tmp_path / f"t{i}")
    merge_models(paths, tmp_path / "merged", base=tmp_path / "base", progress=False)
    merged = LlamaForCausalLM.from_pretrained(tmp_path / "merged")
    t1, t2 = (LlamaForCausalLM.from_pretrained(p) for p in paths)
    for (name, p), p1, p2, p0 in zip(merged.named_parameters(), t1.parameters(), t2.parameters(), base.parameters()):
        v1, v2 = ((p1 - p0) ** 2).mean(), ((p2 - p0) ** 2).mean()
        expected = (v1 * p1 + v2 * p2) / (v1 + v2)
        torch.testing.assert_close(p, expected, rtol=1e-5, atol=1e-6, msg=name)


def test_bad_inputs(checkpoints, tmp_path):
    base, targets, paths, base_path = checkpoints
    bad_keys = dict(targets[0])
    bad_keys["extra.weight"] = torch.zeros(2)
    save_file(bad_keys, str(tmp_path / "keys.safetensors"))
    with pytest.raises(ValueError, match="tensor names differ.*extra.weight"):
        merge_models([paths[0], tmp_path / "keys.safetensors"], tmp_path / "o1", base=base_path, progress=False)
    bad_shape = dict(targets[0])
    bad_shape["layer.bias"] = torch.zeros(6)
    save_file(bad_shape, str(tmp_path / "shape.safetensors"))
    with pytest.raises(ValueError, match="'layer.bias' has shape"):
        merge_models([paths[0], tmp_path / "shape.safetensors"], tmp_path / "o2", base=base_path, progress=False)
    with pytest.raises(ValueError, match="tensor names differ"):
        other_base = {k: v for k, v in base.items() if k != "layer.bias"}
        save_file(other_base, str(tmp_path / "base2.safetensors"))
        merge_models(paths, tmp_path / "o3", base=tmp_path / "base2.safetensors", progress=False)
    bad_int = dict(targets[0])
    bad_int["position_ids"] = torch.arange(7) + 1
    save_file(bad_int, str(tmp_path / "int.safetensors"))
    with pytest.raises(ValueError, match="non-floating tensor 'position_ids'"):
        merge_models([paths[0], tmp_path / "int.safetensors"], tmp_path / "o4", method="linear", progress=False)
    with pytest.raises(ValueError, match="needs base="):
        merge_models(paths, tmp_path / "o5", progress=False)
    with pytest.raises(ValueError, match="weights has 2 entries for 3 targets"):
        merge_models(paths, tmp_path / "o6", method="linear", weights=[1, 2], progress=False)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        merge_models([tmp_path / "missing"], tmp_path / "o7", method="linear", progress=False)
    (tmp_path / "garbage.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot read safetensors file"):
        merge_models([tmp_path / "garbage.safetensors"], tmp_path / "o8", method="linear", progress=False)
    with pytest.raises(ValueError, match="method must be"):
        merge_models(paths, tmp_path / "o9", method="bogus", progress=False)


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_merge_never_writes_into_an_input(checkpoints, tmp_path, capsys):
    """Issue 10.1: --out equal to, inside, or containing an input, or non-empty, is refused before
    any work, with a one-line CLI error; the inputs are untouched."""
    from fusekernels.cli import main

    _, _, paths, base_path = checkpoints
    before = {p: _snapshot(p) for p in paths}
    a, b = (str(p) for p in paths[:2])
    (paths[0] / INDEX_NAME_STALE).write_text("{}")  # an extra file the old code deleted
    before[paths[0]] = _snapshot(paths[0])
    for out, why in ((a, "not empty|overlaps"), (str(paths[0] / "sub"), "overlaps"),
                     (str(tmp_path), "not empty|overlaps"), (str(paths[0] / "m.safetensors"), "overlaps"),
                     (str(paths[1] / "model-00001-of-00002.safetensors"), "already exists|overlaps")):
        code = main(["merge", "--targets", a, b, "--method", "linear", "--weights", "0.5", "0.5", "--out", out])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and "error:" in err, (out, err)
        assert any(w in err for w in why.split("|")), err
    for p in paths:
        assert _snapshot(p) == before[p]
    assert not (paths[0] / "sub").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        merge_models(paths, tmp_path / "full", method="linear", progress=False)
    with pytest.raises(ValueError, match="overlaps"):
        merge_models(paths, tmp_path / "x", base=tmp_path / "x" / "base.safetensors", progress=False)
    # an empty existing folder is fine
    (tmp_path / "empty").mkdir()
    merge_models(paths, tmp_path / "empty", method="linear", progress=False)
    assert (tmp_path / "empty" / "model.safetensors").is_file()


INDEX_NAME_STALE = "model.safetensors.index.json.bak"


@pytest.mark.parametrize("out_name", ["merged", "merged.safetensors"])
def test_interrupted_merge_leaves_no_output(checkpoints, tmp_path, monkeypatch, out_name):
    """The output appears only complete: a failure mid-merge leaves neither it nor temporaries."""
    from fusekernels.pipeline import merge as merge_mod

    _, _, paths, base_path = checkpoints
    calls = {"n": 0}
    real_add = merge_mod._ShardWriter.add

    def failing_add(self, key, tensor):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk full")
        real_add(self, key, tensor)

    monkeypatch.setattr(merge_mod._ShardWriter, "add", failing_add)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(RuntimeError, match="disk full"):
        merge_models(paths, work / out_name, base=base_path, max_shard_size=16, progress=False)
    assert list(work.iterdir()) == []
