"""Training on the pipeline's aligned chunks: loss_type="alm" and metric_level="token" through
FusionTrainer, fused LM head and full logits alike."""
import tempfile

import numpy as np
import pytest
import torch
from transformers import TrainingArguments

from fusekernels.integration import FusionArguments, FusionDataCollator, FusionTrainer
from fusekernels.pipeline import build_fusion_dataset

from .helpers import tiny_llama


def _tokenizer(name):
    assets = pytest.importorskip("fusekernels.tokenization.assets")
    try:
        return assets.load_tokenizer(name) if name != "kjv" else assets.kjv_verses(30, start=200)
    except assets.AssetUnavailable as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def packed():
    student, gpt2, qwen = _tokenizer("mistral-v1"), _tokenizer("gpt2"), _tokenizer("qwen")
    teachers = [(tiny_llama(len(gpt2), hidden=16, layers=1, seed=1), gpt2),
                (tiny_llama(len(qwen), hidden=16, layers=1, seed=2), qwen)]
    data = build_fusion_dataset(_tokenizer("kjv"), student, teachers, block_size=48, k=4, split_margin=16, cache=False,
                                progress=False)
    return student, data


def _train(student, data, fusion_args, fused):
    torch.manual_seed(0)
    model = tiny_llama(len(student), seed=5)
    args = TrainingArguments(tempfile.mkdtemp(), max_steps=3, per_device_train_batch_size=2, learning_rate=1e-3,
                             report_to="none", logging_steps=1, save_strategy="no", seed=0)
    fusion_args.fused_lm_head = "always" if fused else "never"
    trainer = FusionTrainer(model=model, args=args, train_dataset=data, fusion_args=fusion_args,
                            data_collator=FusionDataCollator(pad_token_id=student.eos_token_id,
                                                             metric_level=fusion_args.metric_level,
                                                             chunks=fusion_args.loss_type == "alm"))
    trainer.train()
    return [h for h in trainer.state.log_history if "loss" in h]


@pytest.mark.parametrize("metric_level", ["sequence", "token"])
def test_alm_trains_and_fused_head_matches_full_logits(packed, metric_level):
    student, data = packed
    runs = [_train(student, data, FusionArguments(loss_type="alm", lam=0.5, metric_level=metric_level), fused)
            for fused in (True, False)]
    for a, b in zip(*runs):
        assert np.isfinite(a["loss"]) and a["fusion_loss"] > 0
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["fusion_loss"] == pytest.approx(b["fusion_loss"], rel=1e-4)


def test_token_level_mince_reads_the_per_token_metric(packed):
    student, data = packed
    assert np.asarray(data[0]["teacher_token_ce"]).shape == (48, 2)
    collate = FusionDataCollator(pad_token_id=student.eos_token_id, metric_level="token")
    batch = collate([data[0], data[1]])
    np.testing.assert_allclose(batch["teacher_ce"][0].numpy(), np.asarray(data[0]["teacher_token_ce"]))
    logs = _train(student, data, FusionArguments(loss_type="kl", lam=0.5, metric_level="token"), fused=True)
    assert all(np.isfinite(h["loss"]) for h in logs)


def test_alm_without_chunk_columns_is_refused(packed):
    student, data = packed
    with pytest.raises(KeyError, match="teacher_chunk_span"):
        FusionDataCollator(pad_token_id=0, chunks=True)([{k: v for k, v in data[0].items()
                                                           if not k.startswith("teacher_chunk")}])
