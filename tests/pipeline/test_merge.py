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


# --------------------------------------------------------------------------- VaRM's zero-variation rule
def _published_param_weights(variations):
    """The published FuseChat merge (``merge_with_param_wegihts``) written out: weights are the
    absolute per-tensor variations, replaced by ones as soon as ANY model's variation is 0, then
    divided by their sum."""
    weights = [abs(v) for v in variations]
    for v in variations:
        if v == 0:
            weights = [1] * len(variations)
    total = sum(weights)
    return [w / total for w in weights]


def test_zero_variation_issue_repro(tmp_path):
    """base = A = [1, 1], B = [2, 2]: the published merge gives [1.5, 1.5] (the default);
    zero_variation="ratio" keeps v / sum(v) = [0, 1] and gives [2, 2]."""
    save_file({"w": torch.tensor([1.0, 1.0])}, str(tmp_path / "base.safetensors"))
    save_file({"w": torch.tensor([1.0, 1.0])}, str(tmp_path / "a.safetensors"))
    save_file({"w": torch.tensor([2.0, 2.0])}, str(tmp_path / "b.safetensors"))
    targets, base = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"], tmp_path / "base.safetensors"
    report = merge_models(targets, tmp_path / "published.safetensors", base=base, progress=False)
    assert load_file(str(tmp_path / "published.safetensors"))["w"].tolist() == [1.5, 1.5]
    assert report.weights["w"] == _published_param_weights(report.variations["w"]) == [0.5, 0.5]
    merge_models(targets, tmp_path / "ratio.safetensors", base=base, zero_variation="ratio", progress=False)
    assert load_file(str(tmp_path / "ratio.safetensors"))["w"].tolist() == [2.0, 2.0]
    from fusekernels.cli import main

    for rule, expected in ((None, [1.5, 1.5]), ("uniform", [1.5, 1.5]), ("ratio", [2.0, 2.0])):
        out = tmp_path / f"cli-{rule}.safetensors"
        argv = ["merge", "--targets", *map(str, targets), "--base", str(base), "--out", str(out)]
        assert main(argv + (["--zero-variation", rule] if rule else [])) == 0
        assert load_file(str(out))["w"].tolist() == expected
    with pytest.raises(ValueError, match="zero_variation= is not used by method='linear'"):
        merge_models(targets, tmp_path / "x.safetensors", method="linear", zero_variation="ratio")


@pytest.mark.parametrize("rule", ["uniform", "ratio"])
def test_varm_when_only_one_target_changes_a_tensor(tmp_path, rule):
    """Three targets; only target 1 changes "only_one", every target changes "all". The default
    follows the published rule (uniform weights for "only_one"), "ratio" gives target 1 the whole
    weight there; both agree on "all"."""
    g = torch.Generator().manual_seed(5)
    base = {"only_one": torch.randn(8, 4, generator=g), "all": torch.randn(16, generator=g)}
    targets = []
    for i in range(3):
        t = {"only_one": base["only_one"].clone(), "all": base["all"] + (i + 1) * 0.1 * torch.randn(16, generator=g)}
        if i == 1:
            t["only_one"] = t["only_one"] + 0.3 * torch.randn(8, 4, generator=g)
        targets.append(t)
        save_file(t, str(tmp_path / f"t{i}.safetensors"))
    save_file(base, str(tmp_path / "base.safetensors"))
    kwargs = {} if rule == "uniform" else {"zero_variation": rule}
    report = merge_models([tmp_path / f"t{i}.safetensors" for i in range(3)], tmp_path / "m.safetensors",
                          base=tmp_path / "base.safetensors", progress=False, **kwargs)
    merged = load_file(str(tmp_path / "m.safetensors"))
    for key in base:
        v = [((t[key].double() - base[key].double()) ** 2).mean().item() for t in targets]
        if rule == "uniform":
            w = _published_param_weights(v)
        else:
            w = [x / sum(v) for x in v]
        expected = sum(wi * t[key].double() for wi, t in zip(w, targets)).float()
        assert report.weights[key] == pytest.approx(w, rel=1e-6, abs=1e-12)
        torch.testing.assert_close(merged[key], expected, rtol=1e-6, atol=1e-7)
    if rule == "uniform":
        assert report.weights["only_one"] == pytest.approx([1 / 3] * 3)
        assert not torch.equal(merged["only_one"], targets[1]["only_one"])
    else:
        assert report.weights["only_one"] == [0.0, 1.0, 0.0]
        assert torch.equal(merged["only_one"], targets[1]["only_one"])
    assert min(report.weights["all"]) > 0 and report.weights["all"] != pytest.approx([1 / 3] * 3, abs=1e-3)


def test_variation_weights_rules():
    assert variation_weights([0.0, 2.0]) == [0.5, 0.5] == _published_param_weights([0.0, 2.0])
    assert variation_weights([0.0, 2.0], zero_variation="ratio") == [0.0, 1.0]
    assert variation_weights([0.0, 0.0], zero_variation="ratio") == [0.5, 0.5]
    assert variation_weights([1.0, 3.0]) == variation_weights([1.0, 3.0], zero_variation="ratio") == [0.25, 0.75]
    # with a temperature the published code also switches to ones first: softmax of ones is uniform
    assert variation_weights([0.0, 2.0], temperature=0.5) == pytest.approx([0.5, 0.5])
    soft = torch.softmax(torch.tensor([0.0, 4.0], dtype=torch.float64), 0).tolist()
    assert variation_weights([0.0, 2.0], temperature=0.5, zero_variation="ratio") == pytest.approx(soft)
    with pytest.raises(ValueError, match="zero_variation"):
        variation_weights([1.0], zero_variation="published")


# --------------------------------------------------------------------------- correct rounding
def _round_exact(value, dtype):
    """Correctly rounded (to nearest, ties to even) ``dtype`` value of a Fraction, by exact
    integer arithmetic (independent of torch's conversions)."""
    from fractions import Fraction

    digits, emin = {torch.bfloat16: (8, -126), torch.float16: (11, -14), torch.float32: (24, -126)}[dtype]
    if value == 0:
        return 0.0
    a = abs(value)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    if Fraction(2) ** e > a:
        e -= 1
    ulp = Fraction(2) ** (max(e, emin) - digits + 1)
    n, rest = divmod(a, ulp)
    if rest > ulp / 2 or (rest == ulp / 2 and n % 2 == 1):
        n += 1
    return float(n * ulp) * (1 if value > 0 else -1)


def _exact_linear(tensors, weights):
    from fractions import Fraction

    w = [Fraction(str(x)) for x in weights]
    columns = [t.reshape(-1).tolist() for t in tensors]
    return [sum(wi * Fraction(x) for wi, x in zip(w, xs)) / sum(w) for xs in zip(*columns)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("weights", [None, [1, 2], [0.3, 0.7]])
def test_linear_merge_is_correctly_rounded(tmp_path, dtype, weights):
    """Every element equals the exact weighted mean rounded once (ties to even), computed with
    fractions. Two targets of nearby values make exact halfway cases frequent; the former float32
    arithmetic with normalised weights (1/3, 2/3) missed some of them by one ulp."""
    g = torch.Generator().manual_seed(7)
    base = torch.randn(64, 96, generator=g)
    a = base.to(dtype)
    b = (base + 0.01 * torch.randn(64, 96, generator=g)).to(dtype)
    save_file({"w": a}, str(tmp_path / "a.safetensors"))
    save_file({"w": b}, str(tmp_path / "b.safetensors"))
    merge_models([tmp_path / "a.safetensors", tmp_path / "b.safetensors"], tmp_path / "m.safetensors",
                 method="linear", weights=weights, progress=False)
    merged = load_file(str(tmp_path / "m.safetensors"))["w"]
    assert merged.dtype == dtype
    exact = _exact_linear([a, b], weights or [1, 1])
    expected = torch.tensor([_round_exact(v, dtype) for v in exact], dtype=torch.float64).reshape(a.shape).to(dtype)
    assert torch.equal(merged, expected)
    # the test can fail: float32 arithmetic with normalised weights misses some elements
    w = [1.0, 1.0] if weights is None else [float(x) / sum(weights) for x in weights]
    old = (w[0] * a.float() + w[1] * b.float()).to(dtype)
    if weights == [1, 2]:
        assert (old != expected).sum() > 0


def test_round_from_float64_is_one_rounding():
    """float64 -> bf16 / fp16 through float32 rounds twice; round_from_float64 rounds once."""
    from fractions import Fraction

    from fusekernels.pipeline.merge import round_from_float64

    g = torch.Generator().manual_seed(0)
    for dtype in (torch.bfloat16, torch.float16):
        grid = torch.randn(4000, generator=g).to(dtype).double()
        nxt = torch.nextafter(grid.to(dtype), torch.tensor(float("inf"), dtype=dtype)).double()
        mid = (grid + nxt) / 2
        # just above / below / on the midpoints, and random values
        values = torch.cat([mid * (1 + 2.0**-40), mid * (1 - 2.0**-40), mid, torch.randn(4000, generator=g).double()])
        values = values[torch.isfinite(values)]
        ours = round_from_float64(values, dtype)
        expected = torch.tensor([_round_exact(Fraction(v), dtype) for v in values.tolist()], dtype=torch.float64)
        assert torch.equal(ours.double(), expected), dtype
        assert not torch.equal(values.to(dtype).double(), expected)  # torch's double rounding misses
    x = torch.tensor([1e300, -1e300, float("inf"), float("nan"), -0.0], dtype=torch.float64)
    out = round_from_float64(x, torch.bfloat16)
    assert out[:3].tolist() == [float("inf"), float("-inf"), float("inf")] and out[3].isnan()
    assert str(out[4].item()) == "-0.0"


# --------------------------------------------------------------------------- one registry
@pytest.fixture()
def toy_method():
    """A toy per-tensor method, registered with one call and removed afterwards: the
    element-wise median of the targets (returned as a tensor)."""
    from fusekernels.pipeline.merge import register_merge_method, unregister_merge_method

    def median(name, tensors, base):
        return torch.stack([t.float() for t in tensors]).median(dim=0).values

    register_merge_method("toy_median", median, min_targets=3, summary="element-wise median (test)")
    yield "toy_median"
    unregister_merge_method("toy_median")


def test_a_registered_method_runs_through_merge_models_and_the_cli(checkpoints, tmp_path, toy_method, capsys):
    from fusekernels.cli import main
    from fusekernels.pipeline.merge import merge_method_names

    base, targets, paths, base_path = checkpoints
    assert toy_method in merge_method_names()
    merge_models(paths, tmp_path / "api", method=toy_method, progress=False)
    code = main(["merge", "--method", toy_method, "--targets", *map(str, paths), "--out", str(tmp_path / "cli")])
    assert code == 0, capsys.readouterr().err
    for out in ("api", "cli"):
        merged = load_file(str(tmp_path / out / "model.safetensors"))
        for key in ("layer.weight", "embed.weight"):
            expected = torch.stack([t[key].float() for t in targets]).median(dim=0).values.to(base[key].dtype)
            assert torch.equal(merged[key], expected), (out, key)
        assert torch.equal(merged["position_ids"], base["position_ids"])
    # what the registration says is enforced: target count, options, base
    with pytest.raises(ValueError, match="at least 3"):
        merge_models(paths[:2], tmp_path / "x", method=toy_method, progress=False)
    with pytest.raises(ValueError, match="weights= is not used by method='toy_median'"):
        merge_models(paths, tmp_path / "x", method=toy_method, weights=[1, 1, 1], progress=False)
    with pytest.raises(ValueError, match="does not use base="):
        merge_models(paths, tmp_path / "x", method=toy_method, base=base_path, progress=False)
    assert main(["merge", "--method", toy_method, "--targets", *map(str, paths[:2]), "--out",
                 str(tmp_path / "y")]) == 2
    assert "at least 3" in capsys.readouterr().err


def test_registered_weights_method_is_rounded_once(checkpoints, tmp_path):
    """A method that returns weights gets the same single rounding as linear."""
    from fusekernels.pipeline.merge import register_merge_method, unregister_merge_method

    register_merge_method("toy_first_two", lambda name, tensors, base: [1, 1] + [0] * (len(tensors) - 2))
    try:
        report = merge_models(paths := checkpoints[2], tmp_path / "m", method="toy_first_two", progress=False)
        linear = merge_models(paths[:2], tmp_path / "l", method="linear", progress=False)
    finally:
        unregister_merge_method("toy_first_two")
    assert report.weights["layer.weight"] == [0.5, 0.5, 0.0] and linear.weights["layer.weight"] == [0.5, 0.5]
    a, b = (load_file(str(tmp_path / x / "model.safetensors")) for x in ("m", "l"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_registry_refuses_duplicates_and_bad_specs():
    from fusekernels.pipeline.merge import get_merge_method, register_merge_method

    with pytest.raises(ValueError, match="already registered"):
        register_merge_method("varm", lambda *a: None)
    with pytest.raises(ValueError, match="base must be one of"):
        register_merge_method("toy_bad", lambda *a: None, base="sometimes")
    with pytest.raises(ValueError, match="method must be one of"):
        get_merge_method("no_such_method")
    assert get_merge_method("VaRM").name == "varm"


def test_every_method_is_in_the_cli_and_the_docs(capsys):
    """The CLI choices and the README's method table come from / match the registry."""
    from pathlib import Path

    from fusekernels.cli import build_parser
    from fusekernels.pipeline.merge import merge_method_names, merge_methods

    names = merge_method_names()
    assert {"varm", "linear", "ties", "dare_ties", "dare_linear", "task_arithmetic", "slerp"} <= set(names)
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    merge_cmd, fusechat_cmd = sub.choices["merge"], sub.choices["fusechat"]
    assert list(next(a for a in merge_cmd._actions if a.dest == "method").choices) == list(names)
    assert list(next(a for a in fusechat_cmd._actions if a.dest == "merge").choices) == list(names)
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    for method in merge_methods():
        assert f"| `{method.name}` |" in readme, method.name


def test_merge_modules_import_without_a_cycle():
    """merge.py uses mergekit_merge and the registry; neither imports merge.py back."""
    import ast
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "fusekernels" / "pipeline"

    def imported(name):
        tree = ast.parse((folder / f"{name}.py").read_text(encoding="utf-8"))
        out = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                out.add(node.module or "")
                out.update(a.name for a in node.names if not node.module)
        return out

    assert "merge" not in imported("mergekit_merge") and "merge" not in imported("merge_registry")
    assert not imported("merge_registry")
    assert {"mergekit_merge", "merge_registry"} <= imported("merge")


def test_combine_over_several_scratch_blocks():
    """A tensor larger than the float64 scratch block is combined block by block, unchanged."""
    from fusekernels.pipeline import merge as merge_mod

    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(2200, 2000, generator=g).to(torch.bfloat16) for _ in range(3)]
    assert xs[0].numel() > 2 * merge_mod._SCRATCH
    out = merge_mod.combine(xs, [1, 2, 3], torch.bfloat16)
    expected = merge_mod.round_from_float64(sum(w * x.double() for w, x in zip([1, 2, 3], xs)) / 6, torch.bfloat16)
    assert torch.equal(out, expected)
