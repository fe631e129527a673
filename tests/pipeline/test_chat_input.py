"""Chat input that is not a plain list of {role: str, content: str}: OpenAI-style content parts,
roles that are not strings, templates that refuse a conversation (no asset packages needed)."""
import pytest

pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

from fusekernels.pipeline.chat import normalize_messages, render_chat, render_chat_dataset  # noqa: E402

from .helpers import make_char_tokenizer  # noqa: E402

CHATML = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
          "{% if add_generation_prompt %}<|assistant|>{% endif %}")
PLAIN = [{"role": "user", "content": "Who created the heaven?"},
         {"role": "assistant", "content": "In the beginning God created the heaven and the earth."}]


def test_text_parts_are_their_joined_text():
    """Content as a list of text parts used to be rendered as its Python repr and trained on."""
    tok = make_char_tokenizer()
    parts = [{"role": "user", "content": [{"type": "text", "text": "Who created "},
                                          {"type": "text", "text": "the heaven?"}]},
             {"role": "assistant", "content": [{"type": "text", "text": PLAIN[1]["content"]}]}]
    assert render_chat(tok, parts, chat_template=CHATML)[0] == render_chat(tok, PLAIN, chat_template=CHATML)[0]
    assert "'type'" not in render_chat(tok, parts, chat_template=CHATML)[0]
    # as Arrow stores them: a part struct with the keys of every part type (None where unused)
    rows = datasets.Dataset.from_dict({"messages": [parts]})
    rendered = render_chat_dataset(rows, tok, chat_template=CHATML)
    assert rendered["text"][0] == render_chat(tok, PLAIN, chat_template=CHATML)[0]


@pytest.mark.parametrize("message, match", [
    ({"role": None, "content": "hi"}, "message 0: role must be a non-empty string, got None"),
    ({"role": "user", "content": 42}, "message 0: content must be a string or a list of text parts, got int"),
    ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png"}}]},
     "message 0: a content part of type 'image_url' is not text"),
    ({"role": "user", "content": None}, "got NoneType"),
    ({"content": "no role"}, "message 0 must be a"),
])
def test_refused_messages(message, match):
    with pytest.raises(ValueError, match=match):
        normalize_messages([message])


def test_errors_name_the_row_and_a_template_refusal_is_a_value_error():
    tok = make_char_tokenizer()
    refusing = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('system messages are not supported') }}"
                "{% endif %}" + CHATML)
    rows = datasets.Dataset.from_dict({"messages": [PLAIN, [{"role": "system", "content": "Be brief."}] + PLAIN]})
    with pytest.raises(ValueError, match=r"row 1 of 'messages': the chat template cannot render this conversation: "
                                         r"system messages are not supported"):
        render_chat_dataset(rows, tok, chat_template=refusing)
    bad_role = datasets.Dataset.from_dict({"messages": [PLAIN, PLAIN, [{"role": "", "content": "x"}]]})
    with pytest.raises(ValueError, match=r"row 2 of 'messages': message 0: role"):
        render_chat_dataset(bad_role, tok, chat_template=CHATML)
