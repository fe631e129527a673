"""The two training routes as users wire them: ``FusionLossFunction.attach`` on a plain Trainer
(one object, component logs), held-out evaluation on plain text (eval CLM loss + perplexity),
the fused LM head on more architectures (OPT, MoE with its router loss) and its fallback."""
import math
import warnings

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("datasets")
from datasets import Dataset  # noqa: E402
from transformers import Trainer  # noqa: E402

from fusekernels.integration import FusionArguments, FusionDataCollator, FusionLossFunction, FusionTrainer, shift_labels  # noqa: E402
from tests.integration.helpers import VOCAB, GradCapture, synthetic_examples, tiny_llama, training_args  # noqa: E402
from tests.integration.test_trainer import assert_same_grads  # noqa: E402


def _plain_texts(n, seed=11):
    """Held-out examples without teacher columns (ragged lengths)."""
    return [{"input_ids": e["input_ids"]} for e in synthetic_examples(n, seed=seed)]


def _reference_clm(model, examples):
    """Token-weighted CLM loss of ``model`` over ``examples`` (float64 sums, one sequence at a time)."""
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for e in examples:
            ids = torch.tensor([e["input_ids"]])
            logits = model(input_ids=ids).logits.double()
            target = shift_labels(ids)
            total += float(torch.nn.functional.cross_entropy(logits[0], target[0], ignore_index=-100, reduction="sum"))
            count += int((target != -100).sum())
    return total / count


def _run(trainer):
    capture = GradCapture()
    trainer.add_callback(capture)
    trainer.train()
    return capture.grads, [h for h in trainer.state.log_history if "loss" in h]


def test_attach_is_one_object_and_logs_like_fusion_trainer(tmp_path):
    """Plain Trainer + ``FusionLossFunction(args).attach(trainer)`` (default remove_unused_columns,
    no callbacks argument) == FusionTrainer: losses, gradients and the logged components."""
    examples = synthetic_examples(8, seed=4)
    args = FusionArguments(fusion="avgce", lam=0.7, lam_schedule="hard_and_decay", fused_lm_head="never")
    overrides = dict(max_steps=2, per_device_train_batch_size=2, gradient_accumulation_steps=2)
    reference = FusionTrainer(model=tiny_llama(seed=1), args=training_args(tmp_path / "ref", **overrides),
                              train_dataset=Dataset.from_list(examples), fusion_args=args)
    ref_grads, ref_logs = _run(reference)
    trainer = Trainer(model=tiny_llama(seed=1),
                      args=training_args(tmp_path / "plain", remove_unused_columns=True, **overrides),
                      train_dataset=Dataset.from_list(examples), data_collator=FusionDataCollator(vocab_size=VOCAB))
    FusionLossFunction(args).attach(trainer)
    grads, logs = _run(trainer)
    assert_same_grads(grads, ref_grads)
    assert len(logs) == 2
    for mine, ref in zip(logs, ref_logs):
        for key in ("loss", "clm_loss", "fusion_loss", "lam"):
            assert mine[key] == pytest.approx(ref[key], rel=1e-4), key
    assert logs[0]["lam"] == pytest.approx(0.7) and logs[1]["lam"] == pytest.approx(0.85)
    assert logs[0]["loss"] == pytest.approx(0.7 * logs[0]["clm_loss"] + 0.3 * logs[0]["fusion_loss"], rel=1e-3)


def test_attach_refuses_a_second_loss(tmp_path):
    trainer = Trainer(model=tiny_llama(), args=training_args(tmp_path), compute_loss_func=lambda *a, **k: 0,
                      train_dataset=Dataset.from_list(synthetic_examples(2)), data_collator=FusionDataCollator())
    with pytest.raises(ValueError, match="already has a compute_loss_func"):
        FusionLossFunction().attach(trainer)


@pytest.mark.parametrize("route", ["fusion_trainer", "attach"])
def test_evaluation_on_plain_text_reports_clm_loss_and_perplexity(tmp_path, route):
    """An eval_dataset without teacher columns: eval_loss = eval_clm_loss = the model's
    token-weighted CLM loss; eval_perplexity = exp of it. Training data stays fusion data."""
    train, held_out = synthetic_examples(4, seed=2), _plain_texts(5)
    model = tiny_llama(seed=3)
    args = training_args(tmp_path, per_device_eval_batch_size=5, remove_unused_columns=True)
    if route == "fusion_trainer":
        trainer = FusionTrainer(model=model, args=args, train_dataset=Dataset.from_list(train),
                                eval_dataset=Dataset.from_list(held_out))
    else:
        trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(train),
                          eval_dataset=Dataset.from_list(held_out), data_collator=FusionDataCollator())
        FusionLossFunction(FusionArguments()).attach(trainer)
    metrics = trainer.evaluate()
    expected = _reference_clm(model, held_out)
    assert metrics["eval_clm_loss"] == pytest.approx(expected, rel=1e-5)
    assert metrics["eval_loss"] == pytest.approx(expected, rel=1e-5)  # one batch: the batch mean is exact
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(expected), rel=1e-4)
    logged = [h for h in trainer.state.log_history if "eval_perplexity" in h]
    assert logged and logged[-1]["eval_clm_loss"] == metrics["eval_clm_loss"]
    # batches of 2: eval_clm_loss stays token-weighted over the whole set
    trainer.args.per_device_eval_batch_size = 2
    assert trainer.evaluate()["eval_clm_loss"] == pytest.approx(expected, rel=1e-5)


def test_evaluation_with_teachers_reports_the_fusion_loss_and_clm_perplexity(tmp_path):
    data = synthetic_examples(4, seed=6)
    model = tiny_llama(seed=3)
    trainer = FusionTrainer(model=model, args=training_args(tmp_path, per_device_eval_batch_size=4),
                            train_dataset=Dataset.from_list(data), eval_dataset=Dataset.from_list(data),
                            fusion_args=FusionArguments(lam=0.5))
    metrics = trainer.evaluate()
    clm = _reference_clm(model, data)
    assert metrics["eval_clm_loss"] == pytest.approx(clm, rel=1e-5)
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(clm), rel=1e-4)
    assert metrics["eval_loss"] != pytest.approx(clm, rel=1e-3)  # lam = 0.5: the fusion term counts


def test_training_on_plain_text_fails_clearly(tmp_path):
    with pytest.raises(ValueError, match="missing column"):
        FusionTrainer(model=tiny_llama(), args=training_args(tmp_path),
                      train_dataset=Dataset.from_list(_plain_texts(2)))


# ---------------------------------------------------------------------- fused head
def tiny_opt(seed=0):
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(seed)
    return OPTForCausalLM(OPTConfig(vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                                    num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=32,
                                    pad_token_id=0, bos_token_id=1, eos_token_id=2))


def tiny_mixtral(seed=0, router=True):
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(seed)
    config = MixtralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                           max_position_embeddings=64, output_router_logits=router, router_aux_loss_coef=0.05)
    return MixtralForCausalLM(config)


def _one_step(tmp_path, model_fn, fused, examples, **fusion):
    trainer = FusionTrainer(model=model_fn(), args=training_args(tmp_path / fused),
                            train_dataset=Dataset.from_list(examples),
                            fusion_args=FusionArguments(fused_lm_head=fused, **fusion))
    return _run(trainer)


@pytest.mark.parametrize("model_fn", [tiny_opt, tiny_mixtral], ids=["opt", "mixtral"])
def test_fused_head_matches_full_logits(tmp_path, model_fn):
    """OPT (which calls its decoder directly) and a MoE model: the fused head is used (no
    warning) and gives the full-logits loss, components and gradients."""
    examples = synthetic_examples(4, seed=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        grads, logs = _one_step(tmp_path, model_fn, "always", examples)
    ref_grads, ref_logs = _one_step(tmp_path, model_fn, "never", examples)
    assert_same_grads(grads, ref_grads, rtol=1e-4, atol=1e-6)
    for key in ("loss", "clm_loss", "fusion_loss"):
        assert logs[0][key] == pytest.approx(ref_logs[0][key], rel=1e-5)


def test_moe_router_loss_is_kept(tmp_path):
    """lam = 1: the fusion trainer's loss is exactly the model's own loss (CLM + coef * router
    load-balancing loss); without output_router_logits there is no router term."""
    batch = FusionDataCollator()(synthetic_examples(3, seed=9))
    for router in (True, False):
        model = tiny_mixtral(seed=2, router=router)
        trainer = FusionTrainer(model=model, args=training_args(tmp_path),
                                train_dataset=Dataset.from_list(synthetic_examples(2)),
                                fusion_args=FusionArguments(lam=1.0))
        model.train()
        ours = trainer.compute_loss(model, dict(batch), num_items_in_batch=None)
        own = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        assert float(ours) == pytest.approx(float(own.loss), rel=1e-5)
        if router:
            assert float(own.aux_loss) > 0
            clm_only = own.loss - model.config.router_aux_loss_coef * own.aux_loss
            assert float(ours) != pytest.approx(float(clm_only), rel=1e-6)



def _llama_without_head_call(seed=1):
    from transformers import LlamaForCausalLM
    from transformers.modeling_outputs import CausalLMOutputWithPast

    class LlamaLinearLogits(LlamaForCausalLM):
        def forward(self, input_ids=None, attention_mask=None, position_ids=None, **kwargs):
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                position_ids=position_ids).last_hidden_state
            return CausalLMOutputWithPast(logits=torch.nn.functional.linear(hidden, self.lm_head.weight))

    base = tiny_llama(seed=seed)
    model = LlamaLinearLogits(base.config)
    model.load_state_dict(base.state_dict())
    return model


def test_fused_head_falls_back_once_when_capture_fails(tmp_path):
    """A model that never calls its lm_head: auto mode warns once and trains on the full logits,
    identical to fused_lm_head='never' (no crash, no second forward)."""
    examples = synthetic_examples(8, seed=8)
    with pytest.warns(RuntimeWarning, match="fused LM head disabled") as record:
        grads, logs = _one_step(tmp_path, _llama_without_head_call, "auto", examples, )
    assert sum("fused LM head" in str(w.message) for w in record) == 1
    ref_grads, ref_logs = _one_step(tmp_path, _llama_without_head_call, "never", examples)
    assert_same_grads(grads, ref_grads)
    assert logs[0]["loss"] == pytest.approx(ref_logs[0]["loss"], rel=1e-6)
