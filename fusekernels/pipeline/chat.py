"""Chat data (FuseChat): conversations rendered with each model's own chat template, aligned on the
student's rendering, with completion-only (assistant) labels.

- :func:`render_chat` renders one conversation (``[{"role": ..., "content": ...}, ...]``) with a
  tokenizer's chat template and returns the text, the character span of every message's content
  and the spans to train on: each assistant turn from the start of its content to the end of
  its turn as rendered (end-of-turn marker included), found by rendering the conversation up to
  the turn with and without the generation prompt.
- :func:`render_chat_dataset` adds those columns to a ``datasets.Dataset`` of conversations, once
  per model: every teacher is extracted (``extract_teacher_topk``) on its own rendering.
- :func:`align_chat_teachers` puts every teacher's top-k on the student's tokens. Templates differ
  between models, message contents do not: a student token takes a teacher's distribution when
  one teacher token covers exactly the same characters *of the same message's content* (the
  byte-span rule applied per message); template tokens get no teacher (absent). ``labels`` are
  the student's ids on assistant spans and -100 elsewhere, so the CLM term and (with
  ``fusion_positions="labels"``, the default) the fusion term cover the same assistant tokens.
  ``pack_sequences`` carries ``labels`` into the blocks.

Token character offsets come from fast tokenizers (``return_offsets_mapping``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .._optional import require

SPAN_COLUMNS = ("content_spans", "label_spans")


def _render(tokenizer, messages, template, generation_prompt=False) -> str:
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation_prompt,
                                             chat_template=template)
    except TemplateError as exc:  # the template's raise_exception(), or a template that does not parse
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"the chat template cannot render this conversation: {message}") from None


def normalize_messages(messages) -> list[dict]:
    """``messages`` checked and with every content a str: OpenAI-style content parts
    (``[{"type": "text", "text": ...}, ...]``) become their texts joined; a part of another
    type (an image, audio), a content that is neither, or a role that is not a non-empty str
    raises ``ValueError`` naming the message."""
    from collections.abc import Mapping

    if isinstance(messages, (str, bytes)) or not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("a conversation must be a non-empty list of {'role': ..., 'content': ...} messages, "
                         f"got {type(messages).__name__}")
    out = []
    for j, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise ValueError(f"message {j} must be a {{'role': ..., 'content': ...}} dict, got {message!r:.80}")
        role, content = message["role"], message["content"]
        if not isinstance(role, str) or not role:
            raise ValueError(f"message {j}: role must be a non-empty string, got {role!r}")
        if isinstance(content, (list, tuple)):
            texts = []
            for part in content:
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                if kind != "text" or not isinstance(part.get("text"), str):
                    raise ValueError(f"message {j}: a content part of type {kind!r} is not text; only text parts "
                                     "({'type': 'text', 'text': ...}) can be trained on")
                texts.append(part["text"])
            content = "".join(texts)
        elif not isinstance(content, str):
            raise ValueError(f"message {j}: content must be a string or a list of text parts, got "
                             f"{type(content).__name__}")
        out.append({**message, "role": role, "content": content})
    return out


def render_chat(tokenizer, messages: Sequence[dict], *, chat_template: str | None = None):
    """``(text, content_spans, label_spans)`` of one conversation (see module docstring).

    Args:
        tokenizer: a tokenizer with a chat template (or pass ``chat_template``).
        messages: list of ``{"role": "system" | "user" | "assistant", "content": str}``; a content
            may also be a list of text parts (see :func:`normalize_messages`).
    Returns:
        the rendered str; int [n_messages, 2] content character spans (start, end), -1 where a
        content was not found verbatim; int [n_labels, 2] spans of the assistant turns.
    """
    template = chat_template or getattr(tokenizer, "chat_template", None)
    if not template:
        raise ValueError(f"{type(tokenizer).__name__} has no chat template: pass chat_template=")
    messages = normalize_messages(messages)
    text = _render(tokenizer, messages, template)
    contents, cursor = [], 0
    for message in messages:
        content = message["content"].strip()
        start = text.find(content, cursor) if content else -1
        contents.append((start, start + len(content)) if start >= 0 else (-1, -1))
        cursor = start + len(content) if start >= 0 else cursor
    labels = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:i], template, generation_prompt=True) if i else ""
        upto = _render(tokenizer, messages[:i + 1], template)
        if text.startswith(upto) and upto.startswith(prompt) and len(upto) > len(prompt):
            labels.append((len(prompt), len(upto)))
        elif contents[i][0] >= 0:  # a template that rewrites earlier turns: the content itself
            labels.append(contents[i])
    return text, np.asarray(contents, dtype=np.int64).reshape(-1, 2), np.asarray(labels, dtype=np.int64).reshape(-1, 2)


def read_chat_template(spec: str | os.PathLike | None, *, arg: str = "chat_template") -> str | None:
    """The text of a Jinja chat-template file, or None (the tokenizer's own) for None, ``-`` or
    ``none``. Raises ``FileNotFoundError`` naming ``arg`` for a missing file."""
    if spec is None or str(spec).lower() in ("-", "none"):
        return None
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"{arg}: chat template file not found: {path}")
    return path.read_text(encoding="utf-8")


def render_chat_dataset(dataset, tokenizer, *, chat_template: str | None = None, messages_column: str = "messages",
                        text_column: str = "text", num_proc: int | None = None):
    """Add ``text_column`` (the rendering) and ``content_spans`` / ``label_spans`` to a dataset of
    conversations, for one model's tokenizer (its template, or ``chat_template``)."""
    require("datasets", "render_chat_dataset")
    if messages_column not in dataset.column_names:
        raise ValueError(f"dataset has no column {messages_column!r} (columns: {dataset.column_names})")

    def render(batch, indices):
        check_interrupted()
        out = {text_column: [], "content_spans": [], "label_spans": []}
        for row, messages in zip(indices, batch[messages_column]):
            try:
                text, contents, labels = render_chat(tokenizer, messages, chat_template=chat_template)
            except ValueError as exc:
                raise ValueError(f"row {row} of {messages_column!r}: {exc}") from None
            out[text_column].append(text)
            out["content_spans"].append(contents.tolist())
            out["label_spans"].append(labels.tolist())
        return out

    from fusekernels import __version__
    from fusekernels._interrupt import check_interrupted
    from fusekernels.fingerprint import json_fingerprint, tokenizer_fingerprint
    from fusekernels.storage import cached_map

    # deterministic, and written to the user cache (never next to the input dataset)
    fingerprint = json_fingerprint(["render-chat", __version__, dataset._fingerprint, tokenizer_fingerprint(tokenizer),
                                    chat_template, messages_column, text_column])[:16]
    return cached_map(dataset, render, label="render-chat", fingerprint=fingerprint, batched=True, with_indices=True,
                      num_proc=num_proc, desc="render chat")


def _offsets(tokenizer, text: str, ids) -> np.ndarray:
    """int [len(ids), 2] character spans of ``ids`` (the pipeline's tokenization of ``text``:
    no special tokens added, EOS appended, maybe truncated); EOS and unknown tails get (-1, -1)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer: chat alignment needs token offsets")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(ids, dtype=np.int64)
    n = min(len(ids), len(enc["input_ids"]))
    if not np.array_equal(ids[:n], np.asarray(enc["input_ids"][:n])):
        raise ValueError("the stored input_ids are not the tokenization of the rendered text (another tokenizer?)")
    out = np.full((len(ids), 2), -1, dtype=np.int64)
    out[:n] = np.asarray(enc["offset_mapping"][:n], dtype=np.int64).reshape(-1, 2)
    return out


def _content_keys(offsets: np.ndarray, contents: np.ndarray) -> list:
    """Per token: (message, start, end) relative to its message's content, or None (template)."""
    keys = []
    for start, end in offsets:
        key = None
        if end > start >= 0:
            for j, (c0, c1) in enumerate(contents):
                if c0 >= 0 and c0 <= start and end <= c1:
                    key = (j, int(start - c0), int(end - c0))
                    break
        keys.append(key)
    return keys


def chat_labels(input_ids, offsets: np.ndarray, label_spans: np.ndarray) -> np.ndarray:
    """int64 [L]: the id where the token starts inside an assistant span, -100 elsewhere."""
    ids = np.asarray(input_ids, dtype=np.int64)
    starts = offsets[:, 0]
    inside = np.zeros(len(ids), dtype=bool)
    for a, b in np.asarray(label_spans).reshape(-1, 2):
        inside |= (starts >= a) & (starts < b) & (offsets[:, 1] > offsets[:, 0])
    return np.where(inside, ids, -100)


def align_chat_teachers(student, teachers: Sequence, *, student_tokenizer, teacher_tokenizers: Sequence,
                        k: int | None = None, text_column: str = "text", logits_dtype: str = "float16",
                        include_base_teacher: bool = False):
    """Every teacher's top-k on the student's tokens of chat data (see module docstring).

    Args:
        student: rows of the student's rendering: ``input_ids`` (its tokenization, e.g. by
            ``tokenize_texts``), ``text_column``, ``content_spans``, ``label_spans`` (and the
            student's own ``topk_ids`` / ``topk_logits`` / ``metric_ce`` with
            ``include_base_teacher``).
        teachers: per teacher, its extraction of its own rendering (``input_ids``, ``topk_ids``,
            ``topk_logits``, ``metric_ce``, ``text_column``, ``content_spans``), same rows.
    Returns:
        a ``datasets.Dataset`` with ``input_ids``, ``labels``, ``teacher_ids`` [L, n, k],
        ``teacher_logits`` [L, n, k] (-inf where a teacher is absent), ``teacher_ce`` [n] and
        ``teacher_aligned`` [n] (positions that got each teacher's distribution).
    """
    require("datasets", "align_chat_teachers")
    import datasets

    from fusekernels.tokenization.byte_span import build_byte_span_map, transfer_rows
    from fusekernels.tokenization.profile import TokenizerProfile

    from .extract import check_storable_logits

    teachers, teacher_tokenizers = list(teachers), list(teacher_tokenizers)
    if len(teachers) != len(teacher_tokenizers):
        raise ValueError(f"{len(teachers)} teacher datasets but {len(teacher_tokenizers)} teacher_tokenizers")
    for name in ("input_ids", text_column, *SPAN_COLUMNS):
        if name not in student.column_names:
            raise ValueError(f"student rows lack column {name!r}: render them with render_chat_dataset")
    for t, teacher in enumerate(teachers):
        for name in ("input_ids", "topk_ids", "topk_logits", "metric_ce", text_column, "content_spans"):
            if name not in teacher.column_names:
                raise ValueError(f"teachers[{t}] lacks column {name!r} (extract it from render_chat_dataset rows)")
        if len(teacher) != len(student):
            raise ValueError(f"teachers[{t}] has {len(teacher)} rows, the student {len(student)}")
    base = TokenizerProfile.from_tokenizer(student_tokenizer)
    tables = [build_byte_span_map(base, TokenizerProfile.from_tokenizer(tok)) for tok in teacher_tokenizers]
    if k is None:
        widths = [len(t[0]["topk_ids"][0]) for t in teachers] + ([len(student[0]["topk_ids"][0])]
                                                                  if include_base_teacher else [])
        k = max(widths)
    n_teachers = len(teachers) + bool(include_base_teacher)
    rows = {name: [] for name in ("input_ids", "labels", "teacher_ids", "teacher_logits", "teacher_ce",
                                  "teacher_aligned")}
    student_np = student.with_format("numpy")
    teachers_np = [t.with_format("numpy") for t in teachers]
    for r in range(len(student)):
        s = student_np[r]
        ids = np.asarray(s["input_ids"], dtype=np.int64)
        s_off = _offsets(student_tokenizer, s[text_column], ids)
        s_keys = _content_keys(s_off, np.asarray(s["content_spans"]).reshape(-1, 2))
        t_ids = np.full((len(ids), n_teachers, k), -1, dtype=np.int32)
        t_logits = np.full((len(ids), n_teachers, k), -np.inf, dtype=np.float32)
        ce, aligned = [], []
        column = 0
        if include_base_teacher:
            own_ids, own_logits = np.asarray(s["topk_ids"]), np.asarray(s["topk_logits"], dtype=np.float32)
            t_ids[:, 0, :own_ids.shape[1]], t_logits[:, 0, :own_ids.shape[1]] = own_ids, own_logits
            ce.append(float(s["metric_ce"]))
            aligned.append(len(ids))
            column = 1
        for t, (teacher, tok, table) in enumerate(zip(teachers_np, teacher_tokenizers, tables)):
            row = teacher[r]
            u_ids = np.asarray(row["input_ids"], dtype=np.int64)
            u_keys = _content_keys(_offsets(tok, row[text_column], u_ids),
                                   np.asarray(row["content_spans"]).reshape(-1, 2))
            where = {key: u for u, key in enumerate(u_keys) if key is not None}
            pairs = [(p, where[key]) for p, key in enumerate(s_keys) if key is not None and key in where]
            if pairs:
                dst, src = np.asarray(pairs).T
                topk_ids, topk_logits = np.asarray(row["topk_ids"]), np.asarray(row["topk_logits"], dtype=np.float32)
                m_ids, m_logits, counts = transfer_rows(table.ids[topk_ids[src]], topk_logits[src])
                width = min(k, m_ids.shape[1])
                t_ids[dst, column + t, :width] = m_ids[:, :width]
                t_logits[dst, column + t, :width] = m_logits[:, :width]
                aligned.append(int((counts > 0).sum()))
            else:
                aligned.append(0)
            ce.append(float(row["metric_ce"]))
        rows["input_ids"].append(ids.astype(np.int32))
        rows["labels"].append(chat_labels(ids, s_off, np.asarray(s["label_spans"]).reshape(-1, 2)).astype(np.int32))
        rows["teacher_ids"].append(t_ids)
        check_storable_logits(t_logits[np.isfinite(t_logits)], logits_dtype, f"row {r}: teacher logits")
        rows["teacher_logits"].append(t_logits.astype(logits_dtype))
        rows["teacher_ce"].append(np.asarray(ce, dtype=np.float32))
        rows["teacher_aligned"].append(np.asarray(aligned, dtype=np.int32))
    features = datasets.Features({
        "input_ids": datasets.List(datasets.Value("int32")),
        "labels": datasets.List(datasets.Value("int32")),
        "teacher_ids": datasets.Array3D(shape=(None, n_teachers, k), dtype="int32"),
        "teacher_logits": datasets.Array3D(shape=(None, n_teachers, k), dtype=logits_dtype),
        "teacher_ce": datasets.List(datasets.Value("float32")),
        "teacher_aligned": datasets.List(datasets.Value("int32")),
    })
    return datasets.Dataset.from_dict(rows, features=features)
