"""FusionSFTTrainer: TRL's SFTTrainer (SFTConfig) with the fusion loss: the same losses and
gradients as FusionTrainer, one forward per micro-batch, component logs, chat-style labels kept,
plain evaluation through TRL's own preparation."""
import pytest

pytest.importorskip("transformers")
pytest.importorskip("datasets")
pytest.importorskip("trl")
from datasets import Dataset  # noqa: E402
from trl import SFTConfig  # noqa: E402

from fusekernels.integration import FusionArguments, FusionSFTTrainer, FusionTrainer  # noqa: E402
from tests.integration.helpers import GradCapture, synthetic_examples, tiny_llama, training_args  # noqa: E402
from tests.integration.test_trainer import assert_same_grads  # noqa: E402
from tests.pipeline.helpers import make_char_tokenizer  # noqa: E402

COMMON = dict(per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=2, learning_rate=1e-3,
              max_grad_norm=0.0, report_to=[], save_strategy="no", logging_steps=1, use_cpu=True, disable_tqdm=True,
              dataloader_num_workers=0, seed=0, bf16=False)  # SFTConfig defaults to bf16: exact comparison in fp32


def _with_labels(examples):
    """Completion-only style labels: the first third of every sequence is prompt (-100)."""
    out = []
    for e in examples:
        ids = list(e["input_ids"])
        cut = len(ids) // 3
        out.append({**e, "labels": [-100] * cut + ids[cut:]})
    return out


def _run(trainer):
    capture = GradCapture()
    trainer.add_callback(capture)
    trainer.train()
    return capture.grads, [h for h in trainer.state.log_history if "loss" in h]


def test_sft_trainer_matches_fusion_trainer_with_one_forward(tmp_path):
    examples = _with_labels(synthetic_examples(8, seed=4))
    fusion = FusionArguments(fusion="avgce", lam=0.6)
    ref_grads, ref_logs = _run(FusionTrainer(model=tiny_llama(seed=1), args=training_args(tmp_path / "ref", **{
        k: v for k, v in COMMON.items() if k != "report_to"}), train_dataset=Dataset.from_list(examples),
        fusion_args=fusion))
    model = tiny_llama(seed=1)
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    trainer = FusionSFTTrainer(model=model, args=SFTConfig(str(tmp_path / "sft"), **COMMON),
                               train_dataset=Dataset.from_list(examples), processing_class=make_char_tokenizer(),
                               fusion_args=fusion)
    grads, logs = _run(trainer)
    assert len(calls) == 4  # 2 steps x 2 micro-batches: one forward each
    assert_same_grads(grads, ref_grads)
    for mine, ref in zip(logs, ref_logs):
        for key in ("loss", "clm_loss", "fusion_loss", "lam"):
            assert mine[key] == pytest.approx(ref[key], rel=1e-4), key
    # the labels column (prompt masked) reached the loss: same result without it differs
    plain = FusionSFTTrainer(model=tiny_llama(seed=1), args=SFTConfig(str(tmp_path / "nolabels"), **COMMON),
                             train_dataset=Dataset.from_list(synthetic_examples(8, seed=4)),
                             processing_class=make_char_tokenizer(), fusion_args=fusion)
    _, plain_logs = _run(plain)
    assert plain_logs[0]["clm_loss"] != pytest.approx(logs[0]["clm_loss"], rel=1e-5)


def test_sft_trainer_evaluates_plain_text(tmp_path):
    tokenizer = make_char_tokenizer()
    held_out = Dataset.from_list([{"text": "In the beginning God created the heaven."}, {"text": "And the earth."}])
    trainer = FusionSFTTrainer(model=tiny_llama(seed=2, vocab=len(tokenizer)),
                               args=SFTConfig(str(tmp_path), per_device_eval_batch_size=2, **COMMON),
                               train_dataset=Dataset.from_list(synthetic_examples(4, vocab=len(tokenizer))),
                               eval_dataset=held_out, processing_class=tokenizer)
    metrics = trainer.evaluate()
    assert metrics["eval_clm_loss"] > 0 and metrics["eval_perplexity"] > 1
