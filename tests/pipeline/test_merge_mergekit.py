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
    with pytest.raises(ValueError, match="exactly two"):
        merge_models([*targets, pivot], tmp_path / "x", method="slerp")
    with pytest.raises(ValueError, match="model folder"):
        merge_models([targets[0] / "model.safetensors", targets[1]], tmp_path / "x", method="ties", base=pivot)
