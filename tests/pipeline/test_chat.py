"""Chat data end to end on three real tokenizers with chat templates (SmolLM2's own; ChatML for
Qwen and the Mistral [INST] format given explicitly): each model's rendering for extraction,
alignment on the student's rendering per message content, assistant-only labels through
align and pack, and a fusion step on the labelled positions."""
import numpy as np
import pytest

pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")
assets = pytest.importorskip("fusekernels.tokenization.assets")

from fusekernels.pipeline.chat import align_chat_teachers, render_chat, render_chat_dataset  # noqa: E402
from fusekernels.pipeline.extract import extract_teacher_topk, tokenize_texts  # noqa: E402
from fusekernels.pipeline.pack import pack_sequences  # noqa: E402
from tests.pipeline.helpers import make_tiny_llama  # noqa: E402

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
MISTRAL = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
           "{% elif m['role'] == 'assistant' %} {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}")
CONVERSATIONS = [
    [{"role": "user", "content": "Who created the heaven and the earth?"},
     {"role": "assistant", "content": "In the beginning God created the heaven and the earth."}],
    [{"role": "user", "content": "What was upon the face of the deep?"},
     {"role": "assistant", "content": "Darkness was upon the face of the deep."},
     {"role": "user", "content": "And then?"},
     {"role": "assistant", "content": "And God said, Let there be light: and there was light."}],
]


@pytest.fixture(scope="module")
def tokenizers():
    try:
        return {"student": (assets.load_tokenizer("mistral-v1"), MISTRAL),
                "smollm2": (assets.load_tokenizer("smollm2"), None),  # its own template
                "qwen": (assets.load_tokenizer("qwen"), CHATML)}
    except assets.AssetUnavailable as err:
        pytest.skip(str(err))


def test_render_chat_spans(tokenizers):
    tok, template = tokenizers["qwen"]
    text, contents, labels = render_chat(tok, CONVERSATIONS[1], chat_template=template)
    assert [text[a:b] for a, b in contents] == [m["content"] for m in CONVERSATIONS[1]]
    assert [text[a:b] for a, b in labels] == ["Darkness was upon the face of the deep.<|im_end|>\n",
                                              "And God said, Let there be light: and there was light.<|im_end|>\n"]
    smol, _ = tokenizers["smollm2"]
    text, contents, labels = render_chat(smol, CONVERSATIONS[0])  # the tokenizer's own template
    assert text[labels[0][0]:labels[0][1]].startswith(CONVERSATIONS[0][1]["content"])
    with pytest.raises(ValueError, match="no chat template"):
        render_chat(tokenizers["student"][0], CONVERSATIONS[0])


def test_chat_end_to_end(tokenizers, tmp_path):
    from transformers import TrainingArguments

    from fusekernels.integration import FusionArguments, FusionTrainer

    data = datasets.Dataset.from_dict({"messages": CONVERSATIONS})
    rendered = {name: render_chat_dataset(data, tok, chat_template=template)
                for name, (tok, template) in tokenizers.items()}
    student_tok = tokenizers["student"][0]
    student_rows = tokenize_texts(student_tok, rendered["student"], max_length=256)
    teachers, teacher_toks = [], []
    for seed, name in enumerate(("smollm2", "qwen")):
        tok = tokenizers[name][0]
        model = make_tiny_llama(len(tok), seed=seed, hidden=16, layers=1)
        teachers.append(extract_teacher_topk(model, tok, rendered[name], k=4, max_length=256, progress=False))
        teacher_toks.append(tok)
    aligned = align_chat_teachers(student_rows, teachers, student_tokenizer=student_tok,
                                  teacher_tokenizers=teacher_toks)
    assert aligned.features["teacher_ids"].shape == (None, 2, 4)
    for r, conversation in enumerate(CONVERSATIONS):
        row = aligned.with_format("numpy")[r]
        ids, labels = row["input_ids"], row["labels"]
        labelled = student_tok.decode(ids[labels != -100])
        for message in conversation:  # assistant tokens (and their EOS) only
            assert (message["content"] in labelled) == (message["role"] == "assistant")
        assert np.all((labels == -100) | (labels == ids))
        present = ~np.isneginf(row["teacher_logits"][:, :, 0])
        assert present.any(axis=0).all()  # both teachers cover some student positions
        for t in range(2):  # teachers only on message contents, never on the [INST] template
            inst = np.flatnonzero(np.isin(ids, student_tok.convert_tokens_to_ids(["▁[", "INST", "]"])))
            assert not present[inst, t].any()
        assert row["teacher_aligned"].tolist() == present.sum(axis=0).tolist()
    # an oracle teacher (top-1 = its own next token): where the student's next token is the same
    # text, the aligned top-1 must be exactly the student's next id
    qwen = teachers[1]
    oracle = qwen.map(lambda row: {"topk_ids": [[t, 0, 0, 0] for t in row["input_ids"][1:] + [0]],
                                   "topk_logits": [[9.0, -9.0, -9.0, -9.0]] * len(row["input_ids"])})
    check = align_chat_teachers(student_rows, [oracle], student_tokenizer=student_tok,
                                teacher_tokenizers=[teacher_toks[1]]).with_format("numpy")
    hits = total = 0
    for row in check:
        present = np.flatnonzero(~np.isneginf(row["teacher_logits"][:-1, 0, 0]))
        total += len(present)
        hits += int((row["teacher_ids"][present, 0, 0] == row["input_ids"][present + 1]).sum())
    assert total > 10 and hits / total > 0.6, (hits, total)

    packed = pack_sequences(aligned, block_size=16)
    assert "labels" in packed.column_names and len(packed) >= 2
    flat_ids = np.concatenate([aligned[i]["input_ids"] for i in range(len(aligned))])
    flat_labels = np.concatenate([aligned[i]["labels"] for i in range(len(aligned))])
    assert packed[0]["labels"] == flat_labels[:16].tolist() and packed[0]["input_ids"] == flat_ids[:16].tolist()

    student = make_tiny_llama(len(student_tok), seed=5, hidden=16, layers=1).train()
    trainer = FusionTrainer(model=student, args=TrainingArguments(str(tmp_path), max_steps=1, use_cpu=True,
                                                                  report_to=[], logging_steps=1,
                                                                  per_device_train_batch_size=2, save_strategy="no"),
                            train_dataset=packed, fusion_args=FusionArguments(lam=0.5))
    trainer.train()
    logs = [h for h in trainer.state.log_history if "fusion_loss" in h]
    assert logs and np.isfinite(logs[0]["fusion_loss"]) and np.isfinite(logs[0]["clm_loss"])


def test_pipeline_api_builds_chat_data(tokenizers):
    """build_fusion_dataset on conversations: the same rows as the step-by-step route."""
    from fusekernels.pipeline.api import build_fusion_dataset

    student_tok, student_template = tokenizers["student"]
    teachers = [(make_tiny_llama(len(tokenizers[n][0]), seed=s, hidden=16, layers=1), tokenizers[n][0])
                for s, n in enumerate(("smollm2", "qwen"))]
    packed, report = build_fusion_dataset(CONVERSATIONS, student_tok, teachers, block_size=48, k=4, cache=False,
                                          chat_templates=[None, CHATML], student_chat_template=student_template,
                                          progress=False, return_report=True)
    assert packed.column_names == ["input_ids", "teacher_ids", "teacher_logits", "teacher_ce", "labels"]
    assert packed.features["teacher_ids"].shape == (None, 2, 4)
    labels = np.concatenate([np.asarray(x) for x in packed["labels"]])
    assert 0 < (labels != -100).sum() < labels.size
    assert all(0 < t["coverage"] < 1 for t in report.teachers)


def test_cli_prepare_chat(tokenizers, tmp_path, capsys):
    """``fusekernels prepare`` on a chat .jsonl: each model's template (the student's and one
    teacher's from files, the other teacher's own), assistant-only labels, teacher columns; bad
    chat options refused before any work."""
    import json

    from fusekernels.cli import main

    for seed, name in enumerate(("smollm2", "qwen")):
        tok = tokenizers[name][0]
        make_tiny_llama(len(tok), seed=seed, hidden=16, layers=1).save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    (tmp_path / "chatml.jinja").write_text(CHATML)
    (tmp_path / "mistral.jinja").write_text(MISTRAL)
    with open(tmp_path / "chat.jsonl", "w") as fh:
        for conversation in CONVERSATIONS * 3:
            fh.write(json.dumps({"messages": conversation}) + "\n")
    run = lambda *a: main([str(x) for x in a])  # noqa: E731
    common = ["prepare", "--data", tmp_path / "chat.jsonl", "--student-tokenizer", "mistral-v1",
              "--teacher", tmp_path / "smollm2", "--teacher", tmp_path / "qwen", "--block-size", 64, "--k", 3,
              "--no-cache"]
    templates = ["--chat-template", "-", tmp_path / "chatml.jinja",
                 "--student-chat-template", tmp_path / "mistral.jinja"]
    assert run(*common, *templates, "--out", tmp_path / "packed") == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "chat run, 6 conversations" in line
    packed = datasets.load_from_disk(str(tmp_path / "packed"))
    assert packed.column_names == ["input_ids", "teacher_ids", "teacher_logits", "teacher_ce", "labels"]
    assert np.asarray(packed[0]["teacher_ids"]).shape == (64, 2, 3)
    ids = np.concatenate([np.asarray(x) for x in packed["input_ids"]])
    labels = np.concatenate([np.asarray(x) for x in packed["labels"]])
    assert f"({(labels != -100).sum()} assistant label tokens kept)" in line
    assert np.all((labels == -100) | (labels == ids))
    student_tok = tokenizers["student"][0]
    labelled, unlabelled = student_tok.decode(ids[labels != -100]), student_tok.decode(ids[labels == -100])
    for message in CONVERSATIONS[0] + CONVERSATIONS[1]:  # fully inside the kept blocks
        assert (message["content"] in labelled) == (message["role"] == "assistant")
        assert (message["content"] in unlabelled) == (message["role"] == "user")

    out = tmp_path / "bad"
    cases = [(["--chat-template", tmp_path / "chatml.jinja"], "2 --teacher but 1 --chat-template"),
             (["--chat-template", "-", tmp_path / "nope.jinja"], "--chat-template: chat template file not found"),
             (["--student-chat-template", tmp_path / "nope.jinja"], "--student-chat-template: chat template file"),
             (["--messages-column", "turns"], "neither a 'text' (--text-column) nor a 'turns'")]
    for extra, message in cases:
        assert run(*common, *extra, "--out", out) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and not out.exists()
    (tmp_path / "docs.jsonl").write_text(json.dumps({"text": "In the beginning."}) + "\n")
    assert run(*common[:2], tmp_path / "docs.jsonl", *common[3:], *templates, "--out", out) == 2
    assert "chat templates given but --data has no 'messages' column" in capsys.readouterr().err
