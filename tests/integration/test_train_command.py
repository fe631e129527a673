"""``fusekernels train``: HfArgumentParser over every TrainingArguments / FusionArguments option,
YAML / JSON config files, transformers' defaults (checkpoints on), exact resume from a checkpoint,
plain-text evaluation and clear user errors."""
import json

import pytest

pytest.importorskip("transformers")
pytest.importorskip("datasets")
yaml = pytest.importorskip("yaml")
from datasets import Dataset  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from fusekernels.cli import main  # noqa: E402
from fusekernels.cli.train import parse_train_args  # noqa: E402
from fusekernels.integration.train_command import run_training  # noqa: E402
from tests.integration.helpers import synthetic_examples, tiny_llama  # noqa: E402
from tests.pipeline.helpers import log_lines, make_char_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_cmd")
    tiny_llama(seed=1).save_pretrained(root / "student")
    make_char_tokenizer().save_pretrained(root / "student")  # 100 ids < the model's 512
    Dataset.from_list(synthetic_examples(24, seed=5)).save_to_disk(str(root / "packed"))
    Dataset.from_list([{"input_ids": e["input_ids"]} for e in synthetic_examples(6, seed=9)]).save_to_disk(
        str(root / "heldout"))
    return root


def _config(assets, out, **extra):
    config = {"model": str(assets / "student"), "data": str(assets / "packed"), "output_dir": str(out),
              "max_steps": 4, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2,
              "learning_rate": 1e-3, "lr_scheduler_type": "cosine", "warmup_steps": 1, "logging_steps": 1,
              "save_steps": 2, "use_cpu": True, "disable_tqdm": True, "seed": 3, "lam": 0.8,
              "lam_schedule": "hard_and_decay", "fusion": "avgce"}
    config.update(extra)
    return config


def _losses(trainer):
    return {h["step"]: (h["loss"], h["clm_loss"], h["fusion_loss"]) for h in trainer.state.log_history if "loss" in h}


class StopAfter(TrainerCallback):
    """Interrupts training after ``step`` optimizer steps (as a killed job would stop)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def test_yaml_config_every_option_and_checkpoints_on(assets, tmp_path):
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(_config(assets, tmp_path / "out", weight_decay=0.01,
                                                              adam_beta2=0.95, report_to="none")))
    model_args, data_args, fusion_args, args = parse_train_args([str(tmp_path / "run.yaml"), "--max_steps", "6",
                                                                 "--lam-schedule", "hard"])
    assert args.max_steps == 6 and fusion_args.lam_schedule == "hard"  # flags override the file
    assert args.weight_decay == 0.01 and args.adam_beta2 == 0.95 and args.lr_scheduler_type == "cosine"
    assert fusion_args.fusion == "avgce" and fusion_args.lam == 0.8 and model_args.model.endswith("student")
    assert args.save_strategy == "steps"  # transformers' default: checkpoints on
    (tmp_path / "run.json").write_text(json.dumps(_config(assets, tmp_path / "o2")))
    assert parse_train_args([str(tmp_path / "run.json")])[3].save_steps == 2
    _, _, _, legacy = parse_train_args(["--model", "m", "--data", "d", "--out", "o", "--steps", "3", "--batch-size",
                                        "5", "--grad-accum", "2", "--lr", "0.1", "--cpu"])
    assert (legacy.output_dir, legacy.max_steps, legacy.per_device_train_batch_size,
            legacy.gradient_accumulation_steps, legacy.learning_rate, legacy.use_cpu) == ("o", 3, 5, 2, 0.1, True)


def test_interrupted_run_resumed_equals_uninterrupted(assets, tmp_path):
    """4 steps in one go == 2 steps, interruption, resume from checkpoint-2 with the same
    options: same losses and components at every step (CPU, fixed seed)."""
    full_trainer, _, _ = run_training(*_parsed(assets, tmp_path / "full"))
    full = _losses(full_trainer)
    assert sorted(full) == [1, 2, 3, 4]
    assert (tmp_path / "full" / "checkpoint-2").is_dir() and (tmp_path / "full" / "checkpoint-4").is_dir()
    assert (tmp_path / "full" / "model.safetensors").is_file()

    out = tmp_path / "interrupted"
    first, _, _ = run_training(*_parsed(assets, out), callbacks=[StopAfter(2)])
    assert sorted(_losses(first)) == [1, 2] and (out / "checkpoint-2").is_dir()
    with log_lines([]) as messages:
        resumed, result, _ = run_training(*_parsed(assets, out, resume_from_checkpoint="latest"))
    assert messages and "resuming from" in messages[0] and result.global_step == 4
    combined = {**_losses(first), **_losses(resumed)}
    assert sorted(combined) == [1, 2, 3, 4]
    for step in full:
        assert combined[step] == pytest.approx(full[step], rel=1e-5), step


def _parsed(assets, out, **extra):
    config = _config(assets, out, **extra)
    argv = []
    for key, value in config.items():
        argv += [f"--{key}", str(value)]
    return parse_train_args(argv)


def test_resume_refuses_changed_options_and_nonempty_output(assets, tmp_path, capsys):
    out = tmp_path / "run"
    run_training(*_parsed(assets, out, max_steps=2))
    with pytest.raises(ValueError, match=r"cannot resume: .*learning_rate"):
        run_training(*_parsed(assets, out, max_steps=2, learning_rate=5e-4, resume_from_checkpoint="latest"))
    with pytest.raises(ValueError, match=r"cannot resume: .*lam"):
        run_training(*_parsed(assets, out, max_steps=2, lam=0.5, resume_from_checkpoint="latest"))
    # the CLI: one line, exit 2
    argv = ["train", "--model", assets / "student", "--data", assets / "packed", "--output_dir", out, "--use_cpu", "1"]
    assert main([str(a) for a in argv]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main([str(a) for a in argv[:-4] + ["--output_dir", tmp_path / "x", "--resume_from_checkpoint",
                                             "latest"]]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("model: m\nno_such_option: 1\n")
    assert main(["train", str(tmp_path / "bad.yaml")]) == 2
    assert "no_such_option" in capsys.readouterr().err


@pytest.mark.parametrize("held_out", ["heldout", "texts.jsonl"])
def test_cli_trains_from_yaml_with_plain_eval(assets, tmp_path, capsys, held_out):
    (tmp_path / "texts.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in ("In the beginning.", "Amen.")))
    eval_data = assets / held_out if held_out == "heldout" else tmp_path / held_out
    config = _config(assets, tmp_path / "out", max_steps=2, eval_data=str(eval_data))
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(tmp_path / "run.yaml")]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("train: 2 steps") and "eval perplexity" in line
    stored = json.loads((tmp_path / "out" / "fusekernels_train.json").read_text())
    assert stored["fusion"]["fusion"] == "avgce" and stored["training"]["max_steps"] == 2
    assert (tmp_path / "out" / "checkpoint-2").is_dir()


# ------------------------------------------------------------------ hostile inputs (second round)
def _cli(capsys, *argv):
    capsys.readouterr()
    code = main(["train", *[str(a) for a in argv]])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("fusekernels train: error:")]
    return code, lines, err


@pytest.mark.parametrize("line, option", [("max_steps: 2.5", "max_steps"), ("learning_rate: [1, 2]", "learning_rate"),
                                          ("lam: high", "lam"), ("bf16: maybe", "bf16")])
def test_config_values_of_the_wrong_type_fail_before_any_work(assets, tmp_path, capsys, monkeypatch, line, option):
    """YAML values argparse never sees as strings: before, a raw traceback (exit 1) after loading the
    model and creating output_dir."""
    import fusekernels.pipeline.io as io

    monkeypatch.setattr(io, "load_model", lambda *a, **k: pytest.fail("the model was loaded before the check"))
    config = {k: v for k, v in _config(assets, tmp_path / "out").items() if k != option}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config) + line + "\n")
    code, lines, err = _cli(capsys, tmp_path / "run.yaml")
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert option in lines[0] and "run.yaml" in lines[0]
    assert not (tmp_path / "out").exists()


def test_latest_skips_a_checkpoint_whose_save_was_interrupted(assets, tmp_path):
    """Ctrl-C while checkpoint-4 was being written leaves only its config files: ``latest`` used
    to pick it and fail, although checkpoint-2 is complete."""
    out = tmp_path / "run"
    first, _, _ = run_training(*_parsed(assets, out), callbacks=[StopAfter(2)])
    partial = out / "checkpoint-4"
    partial.mkdir()
    for name in ("config.json", "generation_config.json"):
        (partial / name).write_text((out / "checkpoint-2" / name).read_text())
    with log_lines([]) as messages:
        resumed, result, _ = run_training(*_parsed(assets, out, resume_from_checkpoint="latest"))
    assert result.global_step == 4
    assert any("skipping" in m and "checkpoint-4" in m for m in messages)
    assert any("resuming from" in m and m.endswith("checkpoint-2") for m in messages)
    with pytest.raises(ValueError, match="incomplete"):
        from fusekernels.integration.train_command import resolve_checkpoint

        broken = tmp_path / "broken" / "checkpoint-9"
        broken.mkdir(parents=True)
        resolve_checkpoint(_parsed(assets, tmp_path / "broken", resume_from_checkpoint=str(broken))[3])


def test_a_failed_run_does_not_block_its_rerun(assets, tmp_path, capsys):
    """A run that failed before its first checkpoint leaves only fusekernels_train.json: rerunning
    the same command used to be refused ("not empty") with no checkpoint to resume from."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "fusekernels_train.json").write_text("{}")
    config = _config(assets, out, max_steps=1)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    code, lines, err = _cli(capsys, tmp_path / "run.yaml")
    assert code == 0, err[-2000:]
    assert json.loads((out / "fusekernels_train.json").read_text())["training"]["max_steps"] == 1
    (out / "other.txt").write_text("not ours")
    (tmp_path / "out2").mkdir()
    assert _cli(capsys, tmp_path / "run.yaml")[0] == 2  # anything else still makes it non-empty


def test_a_nan_model_stops_with_one_line(assets, tmp_path, capsys):
    """One NaN weight used to train to "success": loss 0, clm_loss nan, exit 0, model saved."""
    import torch

    model = tiny_llama(seed=1)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path / "nan_model")
    make_char_tokenizer().save_pretrained(tmp_path / "nan_model")
    config = _config(assets, tmp_path / "out", model=str(tmp_path / "nan_model"), max_steps=2)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    code, lines, err = _cli(capsys, tmp_path / "run.yaml")
    assert code == 2 and len(lines) == 1, err[-2000:]
    assert "model.layers.0.mlp.up_proj.weight holds NaN" in lines[0]
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_a_loss_that_becomes_nan_stops_training(assets, tmp_path, capsys):
    config = _config(assets, tmp_path / "out", max_steps=6, learning_rate=1e37, warmup_steps=0,
                     lr_scheduler_type="constant", max_grad_norm=0.0)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    code, lines, err = _cli(capsys, tmp_path / "run.yaml")
    assert code == 2 and len(lines) == 1, err[-2000:]
    assert "training stopped at step" in lines[0] and "clm_loss nan" in lines[0] and "not finite" in lines[0]
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_data_without_label_tokens_is_refused(assets, tmp_path, capsys):
    rows = synthetic_examples(8, seed=5)
    for row in rows:
        row["labels"] = [-100] * len(row["input_ids"])
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "nolabels"))
    config = _config(assets, tmp_path / "out", data=str(tmp_path / "nolabels"), max_steps=2)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    code, lines, err = _cli(capsys, tmp_path / "run.yaml")
    assert code == 2 and len(lines) == 1 and "no label tokens" in lines[0], err[-2000:]
    with pytest.warns(UserWarning, match="no label tokens"):
        run_training(*_parsed(assets, tmp_path / "out2", data=str(tmp_path / "nolabels"), max_steps=1,
                              fusion_positions="attention"))


def test_collator_errors_name_the_dataset_row(assets, tmp_path):
    """A malformed row in the middle of the data: the error names its row, not its batch slot."""
    rows = synthetic_examples(12, seed=5)
    rows[7]["teacher_ids"] = rows[7]["teacher_ids"] + 100000  # beyond the model's vocabulary
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(ValueError, match=r"row 7: teacher_ids contains id"):
        run_training(*_parsed(assets, tmp_path / "out", data=str(tmp_path / "bad"), max_steps=6, seed=1))


# ------------------------------------------------------------------ resume that extends a finished run
def _train_cli(capsys, config_file, *flags):
    capsys.readouterr()
    code = main(["train", str(config_file), *[str(f) for f in flags]])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    return captured.out.strip().splitlines()[-1]


def _checkpoints(out):
    return sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))


def test_a_finished_run_trains_further_with_a_larger_max_steps(assets, tmp_path, capsys):
    """A finished run resumed with the same --max_steps used to train one step past it (24 rows,
    6 steps per epoch: step 4 is mid-epoch) and one resumed with a larger one was refused."""
    from safetensors.torch import load_file

    out = tmp_path / "out"
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(_config(assets, out, max_steps=4)))
    assert _train_cli(capsys, tmp_path / "run.yaml").startswith("train: 4 steps, mean training loss")
    line = _train_cli(capsys, tmp_path / "run.yaml", "--resume_from_checkpoint", "latest")
    assert line.startswith("train: already complete at step 4") and "0.0000" not in line
    assert _checkpoints(out) == [2, 4]
    with log_lines([]) as messages:
        line = _train_cli(capsys, tmp_path / "run.yaml", "--max_steps", 8, "--resume_from_checkpoint", "latest")
    assert line.startswith("train: resumed at step 4, 4 steps more to step 8, mean training loss")
    loss = float(line.split("mean training loss ")[1].split(";")[0])
    assert loss > 0.5  # the mean of steps 5-8, not a 0 over no step
    assert any("max_steps 4 -> 8" in m for m in messages), messages
    assert _checkpoints(out) == [2, 4, 6, 8]
    state = json.loads((out / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8 and [h["step"] for h in state["log_history"] if "loss" in h] == list(range(1, 9))
    assert json.loads((out / "fusekernels_train.json").read_text())["training"]["max_steps"] == 8
    final, last = load_file(out / "model.safetensors"), load_file(out / "checkpoint-8" / "model.safetensors")
    assert all(final[k].equal(last[k]) for k in last)
    # the new length is the run's own now: the same command again, or a smaller target, trains nothing
    for steps in (8, 6):
        line = _train_cli(capsys, tmp_path / "run.yaml", "--max_steps", steps, "--resume_from_checkpoint", "latest")
        assert line.startswith("train: already complete at step 8"), line
    assert _checkpoints(out) == [2, 4, 6, 8]
    # options that shape the weights are still refused
    code, lines, _ = _cli(capsys, tmp_path / "run.yaml", "--max_steps", 10, "--lam", 0.5,
                          "--resume_from_checkpoint", "latest")
    assert code == 2 and "cannot resume" in lines[0] and "lam" in lines[0]


def test_a_finished_epoch_run_trains_further_with_more_epochs(assets, tmp_path, capsys):
    """At an epoch boundary the Trainer trains nothing and used to print a mean loss of 0.0000."""
    out = tmp_path / "out"
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(_config(assets, out, max_steps=-1, num_train_epochs=1,
                                                              save_steps=3)))
    assert _train_cli(capsys, tmp_path / "run.yaml").startswith("train: 6 steps")
    line = _train_cli(capsys, tmp_path / "run.yaml", "--resume_from_checkpoint", "latest")
    assert line.startswith("train: already complete at step 6") and "0.0000" not in line
    line = _train_cli(capsys, tmp_path / "run.yaml", "--num_train_epochs", 2, "--resume_from_checkpoint", "latest")
    assert line.startswith("train: resumed at step 6, 6 steps more to step 12"), line
    assert _checkpoints(out) == [3, 6, 9, 12]
