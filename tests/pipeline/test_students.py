"""``CONFIG:TOKENIZER`` students: fresh small Llamas for a named tokenizer."""
import pytest

from fusekernels.pipeline.students import STUDENT_CONFIGS, is_student_spec, parse_student_spec, student_from_spec


def test_specs(tmp_path):
    assert is_student_spec("tiny:mistral-v1") and is_student_spec("huge:gpt2")
    assert not is_student_spec("smollm2") and not is_student_spec("org/name") and not is_student_spec(None)
    assert parse_student_spec("small:/some/folder") == ("small", "/some/folder")
    with pytest.raises(ValueError, match="unknown config 'huge'"):
        parse_student_spec("huge:gpt2")
    with pytest.raises(ValueError, match="CONFIG:TOKENIZER"):
        parse_student_spec("tiny")


@pytest.mark.parametrize("config", list(STUDENT_CONFIGS))
def test_student_from_spec(config, monkeypatch):
    pytest.importorskip("mistral_common")
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tok = student_from_spec(f"{config}:mistral-v1", seed=3)
    assert tok.pad_token_id is None  # Mistral has none: the model pads with EOS
    assert model.config.vocab_size == len(tok) == 32000
    assert model.config.pad_token_id == tok.eos_token_id and model.config.eos_token_id == tok.eos_token_id
    assert model.config.hidden_size == STUDENT_CONFIGS[config]["hidden_size"]
    again, _ = student_from_spec(f"{config}:mistral-v1", seed=3)
    other, _ = student_from_spec(f"{config}:mistral-v1", seed=4)
    w = model.get_input_embeddings().weight
    assert w.equal(again.get_input_embeddings().weight) and not w.equal(other.get_input_embeddings().weight)


def test_fresh_student_needs_an_eos_token():
    from types import SimpleNamespace

    from fusekernels.pipeline.students import fresh_student

    no_eos = SimpleNamespace(eos_token_id=None, bos_token_id=1, pad_token_id=None, __len__=lambda: 10)
    with pytest.raises(ValueError, match="has no EOS token"):
        fresh_student("tiny", no_eos, seed=0, name="tiny:custom")
