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
    assert "no checkpoint" in capsys.readouterr().err
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
