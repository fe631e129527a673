"""TIES / DARE / SLERP / task-arithmetic merges through fusekernels vs mergekit run directly."""
import pytest
import torch

pytest.importorskip("mergekit")
from safetensors.torch import load_file  # noqa: E402

from fusekernels.pipeline.merge import merge_models  # noqa: E402

from .helpers import make_tiny_llama  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("mk")
    make_tiny_llama(64, seed=0).save_pretrained(root / "pivot")
    targets = []
    for i in (1, 2):
        model = make_tiny_llama(64, seed=0)
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * i * torch.randn(p.shape, generator=gen))
        model.save_pretrained(root / f"target{i}")
        targets.append(root / f"target{i}")
    return root / "pivot", targets


def _direct(config, out, seed=0):
    """mergekit itself, on a configuration written like FuseChat's published YAML files."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    run_merge(MergeConfiguration.model_validate(config), str(out),
              options=MergeOptions(copy_tokenizer=False, random_seed=seed, quiet=True))
    return load_file(str(out / "model.safetensors"))


def _fusechat_config(method, pivot, targets):
    models = [{"model": str(pivot)}]
    for target, weight in zip(targets, (0.25, 0.5)):
        params = {"weight": weight}
        if method != "task_arithmetic":
            params["density"] = 0.5
        models.append({"model": str(target), "parameters": params})
    return {"models": models, "merge_method": method, "base_model": str(pivot), "parameters": {"normalize": True}}


@pytest.mark.parametrize("method", ["ties", "dare_ties", "dare_linear", "task_arithmetic"])
def test_matches_mergekit_run_directly(models, tmp_path, method):
    pivot, targets = models
    density = None if method == "task_arithmetic" else 0.5
    report = merge_models(targets, tmp_path / "ours", method=method, base=pivot, weights=[0.25, 0.5],
                          density=density, seed=0)
    ours = load_file(str(tmp_path / "ours" / "model.safetensors"))
    ref = _direct(_fusechat_config(method, pivot, targets), tmp_path / "ref")
    assert set(ours) == set(ref) and report.num_parameters == sum(t.numel() for t in ref.values())
    for key in ref:
        assert torch.equal(ours[key], ref[key]), key
    pivot_w = load_file(str(pivot / "model.safetensors"))
    assert any(not torch.equal(ours[k], pivot_w[k]) for k in ours)  # the merge changed the pivot
    if method.startswith("dare"):  # another seed drops other entries
        merge_models(targets, tmp_path / "seed1", method=method, base=pivot, weights=[0.25, 0.5], density=0.5, seed=1)
        other = load_file(str(tmp_path / "seed1" / "model.safetensors"))
        assert any(not torch.equal(other[k], ours[k]) for k in ours)


def test_task_arithmetic_by_hand(models, tmp_path):
    pivot, targets = models
    merge_models(targets, tmp_path / "ta", method="task_arithmetic", base=pivot, weights=[0.3, 0.6],
                 normalize=False, dtype="float32")
    ours = load_file(str(tmp_path / "ta" / "model.safetensors"))
    p = load_file(str(pivot / "model.safetensors"))
    t1, t2 = (load_file(str(t / "model.safetensors")) for t in targets)
    for key in ours:
        expected = p[key] + 0.3 * (t1[key] - p[key]) + 0.6 * (t2[key] - p[key])
        torch.testing.assert_close(ours[key], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("t", [0.3, [0.0, 0.5, 1.0]])
def test_slerp_matches_mergekit(models, tmp_path, t):
    _, targets = models
    merge_models(targets, tmp_path / "ours", method="slerp", t=t)
    ours = load_file(str(tmp_path / "ours" / "model.safetensors"))
    config = {"models": [{"model": str(targets[0])}, {"model": str(targets[1])}], "merge_method": "slerp",
              "base_model": str(targets[0]), "parameters": {"t": t}}
    ref = _direct(config, tmp_path / "ref")
    for key in ref:
        assert torch.equal(ours[key], ref[key]), key


def test_mergekit_methods_are_as_safe_as_the_others(models, tmp_path, capsys):
    from fusekernels.cli import main

    pivot, targets = models
    before = {p: sorted(x.name for x in p.iterdir()) for p in (pivot, *targets)}
    for out in (targets[0], targets[0] / "sub", tmp_path.parent):
        code = main(["merge", "--method", "ties", "--targets", *map(str, targets), "--base", str(pivot),
                     "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert {p: sorted(x.name for x in p.iterdir()) for p in (pivot, *targets)} == before
    code = main(["merge", "--method", "dare_linear", "--targets", *map(str, targets), "--base", str(pivot),
                 "--weights", "0.25", "0.5", "--density", "0.5", "--out", str(tmp_path / "cli")])
    assert code == 0 and (tmp_path / "cli" / "model.safetensors").is_file()
    assert (tmp_path / "cli" / "config.json").is_file()
    with pytest.raises(ValueError, match="needs base="):
        merge_models(targets, tmp_path / "x", method="ties")
    with pytest.raises(ValueError, match="exactly 2 targets"):
        merge_models([*targets, pivot], tmp_path / "x", method="slerp")
    with pytest.raises(ValueError, match="model folder"):
        merge_models([targets[0] / "model.safetensors", targets[1]], tmp_path / "x", method="ties", base=pivot)


def _tiny_family(root, layers=2, dtype=None, n_targets=2):
    """A pivot and n targets fine-tuned from it (tiny Llama folders), optionally cast to dtype."""
    pivot = make_tiny_llama(64, seed=0, layers=layers)
    (pivot.to(dtype) if dtype else pivot).save_pretrained(root / "pivot")
    targets = []
    for i in range(1, n_targets + 1):
        model = make_tiny_llama(64, seed=0, layers=layers)
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * i * torch.randn(p.shape, generator=gen))
        (model.to(dtype) if dtype else model).save_pretrained(root / f"target{i}")
        targets.append(root / f"target{i}")
    return root / "pivot", targets


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_linear_of_half_checkpoints_equals_mergekit_bit_for_bit(tmp_path, dtype):
    """The streamed linear merge of bf16 / fp16 checkpoints equals mergekit's linear merge run
    directly, to the last bit: uniform weights, FuseChat's published 1:2 and 1:2:3; decimal
    weights 0.3 / 0.5 / 0.2 equal mergekit given 3 / 5 / 2 (mergekit rounds 0.3 to float32)."""
    _, targets = _tiny_family(tmp_path, dtype=dtype, n_targets=3)
    inputs = {t: load_file(str(t / "model.safetensors")) for t in targets}
    for i, (ours_w, mk_w) in enumerate([(None, [1, 1, 1]), ([1, 2, 3], [1, 2, 3]), ([0.3, 0.5, 0.2], [3, 5, 2])]):
        merge_models(targets, tmp_path / f"ours{i}", method="linear", weights=ours_w, progress=False)
        ours = load_file(str(tmp_path / f"ours{i}" / "model.safetensors"))
        config = {"models": [{"model": str(t), "parameters": {"weight": w}} for t, w in zip(targets, mk_w)],
                  "merge_method": "linear"}
        ref = _direct(config, tmp_path / f"ref{i}")
        assert set(ours) == set(ref)
        for key in ref:
            assert ref[key].dtype == dtype and torch.equal(ours[key], ref[key]), (mk_w, key)
        if ours_w is None:  # the former arithmetic (float32, weights 1/3 each) missed some elements
            w = [1 / 3] * 3
            old = {k: sum(wi * inputs[t][k].float() for wi, t in zip(w, targets)).to(dtype) for k in ref}
            assert sum(int((old[k] != ref[k]).sum()) for k in ref) > 0


# FuseChat's published SLERP configuration (merge/mergekit_configs/fusechat-slerp.yml) with local
# model folders; the published base_model is the pivot, which mergekit 0.1.5 refuses for SLERP
# ("Base input is not present in merge inputs"): SLERP runs from the first target (t = 0).
PUBLISHED_SLERP_T = [{"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
                     {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
                     {"value": 0.5}]


def test_slerp_with_fusechats_published_per_layer_t(tmp_path, capsys):
    from fusekernels.cli import main

    _, targets = _tiny_family(tmp_path, layers=5)
    config = {"slices": [{"sources": [{"model": str(targets[0]), "layer_range": [0, 5]},
                                      {"model": str(targets[1]), "layer_range": [0, 5]}]}],
              "merge_method": "slerp", "base_model": str(targets[0]), "parameters": {"t": PUBLISHED_SLERP_T},
              "dtype": "bfloat16"}
    ref = _direct(config, tmp_path / "ref")
    merge_models(targets, tmp_path / "api", method="slerp", dtype="bfloat16",
                 t={"self_attn": [0, 0.5, 0.3, 0.7, 1], "mlp": [1, 0.5, 0.7, 0.3, 0], "*": 0.5})
    code = main(["merge", "--method", "slerp", "--targets", *map(str, targets), "--merge-dtype", "bfloat16",
                 "--t", "self_attn=0,0.5,0.3,0.7,1", "mlp=1,0.5,0.7,0.3,0", "0.5", "--out", str(tmp_path / "cli")])
    assert code == 0, capsys.readouterr().err
    flat = _direct({**config, "parameters": {"t": 0.5}}, tmp_path / "flat")
    for out in ("api", "cli"):
        ours = load_file(str(tmp_path / out / "model.safetensors"))
        assert set(ours) == set(ref)
        for key in ref:
            assert torch.equal(ours[key], ref[key]), (out, key)
    # the filters and gradients took effect: layer 0 attention is the first target, its MLP the second
    t1, t2 = (load_file(str(t / "model.safetensors")) for t in targets)
    q0, up0 = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(ref[q0], t1[q0].to(torch.bfloat16)) and torch.equal(ref[up0], t2[up0].to(torch.bfloat16))
    assert not torch.equal(ref[q0], flat[q0])
    norm = "model.norm.weight"  # the fallback 0.5
    assert torch.equal(ref[norm], flat[norm])


def test_filtered_weights_for_ties_match_mergekit(models, tmp_path, capsys):
    """Per-parameter-filter weights (mergekit's YAML form) through the API and the CLI."""
    from fusekernels.cli import main

    pivot, targets = models
    config = _fusechat_config("ties", pivot, targets)
    config["models"][1]["parameters"]["weight"] = [{"filter": "self_attn", "value": 0.1},
                                                    {"filter": "mlp", "value": [0.2, 0.9]}, {"value": 0.25}]
    ref = _direct(config, tmp_path / "ref")
    merge_models(targets, tmp_path / "api", method="ties", base=pivot, density=0.5,
                 weights=[{"self_attn": 0.1, "mlp": [0.2, 0.9], "*": 0.25}, 0.5])
    code = main(["merge", "--method", "ties", "--targets", *map(str, targets), "--base", str(pivot),
                 "--weights", "self_attn=0.1;mlp=0.2,0.9;0.25", "0.5", "--density", "0.5",
                 "--out", str(tmp_path / "cli")])
    assert code == 0, capsys.readouterr().err
    plain = _direct(_fusechat_config("ties", pivot, targets), tmp_path / "plain")
    for out in ("api", "cli"):
        ours = load_file(str(tmp_path / out / "model.safetensors"))
        for key in ref:
            assert torch.equal(ours[key], ref[key]), (out, key)
    assert any(not torch.equal(ref[k], plain[k]) for k in ref if "self_attn" in k)
    assert all(torch.equal(ref[k], plain[k]) for k in ref if "norm" in k)


def test_parameter_settings_parse_and_refuse(tmp_path):
    from fusekernels.pipeline.mergekit_merge import parameter_setting, parse_cli_setting, parse_setting

    assert parse_setting("0.5") == 0.5 and parse_setting("0,0.5,1") == [0.0, 0.5, 1.0]
    assert parse_setting("self_attn=0,1;0.5") == [{"filter": "self_attn", "value": [0.0, 1.0]}, {"value": 0.5}]
    assert parse_cli_setting(["0", "0.5", "1"]) == [0.0, 0.5, 1.0]  # the former `--t 0 0.5 1`
    assert parse_cli_setting(["self_attn=0,1", "0.5"]) == parse_setting("self_attn=0,1;0.5")
    assert parameter_setting({"*": 0.5, "mlp": 1}) == [{"filter": "mlp", "value": 1.0}, {"value": 0.5}]
    assert parameter_setting(PUBLISHED_SLERP_T) == PUBLISHED_SLERP_T
    with pytest.raises(ValueError, match="fallback"):
        parameter_setting([{"value": 0.5}, {"filter": "mlp", "value": 1}])
    with pytest.raises(ValueError, match="cannot read"):
        parse_setting("self_attn=zero")
    with pytest.raises(ValueError, match="filter name"):
        parse_setting("=0.5")
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        merge_models([tmp_path / "a", tmp_path / "b"], tmp_path / "o", method="slerp", t={"mlp": [0, 1.5]})
    with pytest.raises(ValueError, match="one number per target"):
        merge_models([tmp_path / "a"], tmp_path / "o", method="linear", weights=[{"mlp": 1}])
