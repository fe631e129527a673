"""Extraction scores each model the way it was trained: the ids its tokenizer puts before a text
(BOS and the like) are prepended, and outputs are kept for the text's own tokens only."""
import datasets
import numpy as np
import pytest
import torch

from fusekernels.pipeline.extract import extract_teacher_topk, start_token_ids

from .helpers import asset, make_char_tokenizer, make_tiny_llama


def _bos_char_tokenizer():
    """The character tokenizer, adding <bos> before every text with add_special_tokens=True."""
    from tokenizers import processors

    tok = make_char_tokenizer()
    tok.add_special_tokens({"bos_token": "<bos>"})
    bos = tok.convert_tokens_to_ids("<bos>")
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A",
                                                                         special_tokens=[("<bos>", bos)])
    return tok, bos


def _manual(model, ids, prefix, k):
    """Top-k and token CE of ``prefix + ids`` by a plain forward, text positions only."""
    full = torch.tensor([prefix + ids])
    with torch.no_grad():
        logits = model(full).logits[0].float()[len(prefix):]
    logp = torch.log_softmax(logits, -1)
    ce = torch.zeros(len(ids))
    ce[:-1] = -logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    return logits.topk(k, -1).indices, ce


def test_start_token_ids_of_real_and_plain_tokenizers():
    tok, bos = _bos_char_tokenizer()
    assert start_token_ids(tok) == [bos]
    assert start_token_ids(make_char_tokenizer()) == []
    assert start_token_ids(asset("load_tokenizer", "gemma3")) == [2]          # <bos>
    assert start_token_ids(asset("load_tokenizer", "smollm2")) == []          # adds none


def test_prepended_start_tokens_and_text_positions_only():
    tok, bos = _bos_char_tokenizer()
    model = make_tiny_llama(len(tok), seed=1)
    texts = ["In the beginning", "God created the heaven and the earth.", "<bos>already starts"]
    data = datasets.Dataset.from_dict({"text": texts})
    ours = extract_teacher_topk(model, tok, data, k=3, batch_size=2, max_length=64, per_token_ce=True, progress=False)
    published = extract_teacher_topk(model, tok, data, k=3, batch_size=2, max_length=64, per_token_ce=True,
                                     progress=False, start_tokens="published")
    for row, text in enumerate(texts):
        ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert ours[row]["input_ids"] == published[row]["input_ids"] == ids   # same rows, same shapes
        prefix = [] if ids[0] == bos else [bos]                                # never a doubled BOS
        top, ce = _manual(model, ids, prefix, 3)
        assert np.array_equal(np.asarray(ours[row]["topk_ids"]), top.numpy())
        np.testing.assert_allclose(ours[row]["per_step_metric_ce"], ce.numpy(), rtol=1e-4, atol=1e-5)
        top0, ce0 = _manual(model, ids, [], 3)
        assert np.array_equal(np.asarray(published[row]["topk_ids"]), top0.numpy())
        np.testing.assert_allclose(published[row]["per_step_metric_ce"], ce0.numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="start_tokens must be one of"):
        extract_teacher_topk(model, tok, data, k=3, max_length=64, progress=False, start_tokens="bos")


def test_real_teachers_score_lower_with_their_start_tokens():
    """Gemma-3 needs its BOS (per-token CE far lower with it); SmolLM2 adds none (bit-identical)."""
    from fusekernels.pipeline.io import load_model
    from fusekernels.recipes.experiment import gemma3_path, smollm2_path

    verses = asset("kjv_verses", 6)
    data = datasets.Dataset.from_dict({"text": [" ".join(verses[i:i + 2]) for i in range(0, 6, 2)]})
    for name, path_fn, expect_bos in (("gemma3", gemma3_path, True), ("smollm2", smollm2_path, False)):
        tok = asset("load_tokenizer", name)
        try:
            path = path_fn()
        except Exception as err:  # asset package missing
            pytest.skip(str(err))
        model = load_model(path).eval()
        runs = {mode: extract_teacher_topk(model, tok, data, k=4, max_length=64, per_token_ce=True, progress=False,
                                           start_tokens=mode) for mode in ("model", "published")}
        new, old = runs["model"], runs["published"]
        assert new["input_ids"] == old["input_ids"]                      # text tokens, position for position
        assert [len(x) for x in new["topk_ids"]] == [len(x) for x in old["topk_ids"]]
        ce_new, ce_old = np.mean(new["metric_ce"]), np.mean(old["metric_ce"])
        if expect_bos:
            assert ce_new < ce_old - 0.5, (name, ce_new, ce_old)
        else:
            assert new["metric_ce"] == old["metric_ce"] and new["topk_ids"] == old["topk_ids"]
        del model
