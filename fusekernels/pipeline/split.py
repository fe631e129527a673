"""Step 1 of the FuseLLM data pipeline: split documents that are too long for any tokenizer.

Published rule: every document is tokenized by every tokenizer without special
tokens. When some tokenization is longer than ``block_size - margin`` ids (margin 48), the
*longest* tokenization (first tokenizer on ties) is cut into consecutive windows of
``block_size - margin`` ids and each window is decoded back to text (special tokens skipped);
those texts replace the document. Otherwise the document stays whole.
"""
from __future__ import annotations

from typing import Sequence

PUBLISHED_MARGIN = 48


def split_text(text: str, tokenizers: Sequence, block_size: int, margin: int = PUBLISHED_MARGIN) -> list[str]:
    """Split one document; returns ``[text]`` when it fits every tokenizer."""
    return _split_batch([text], tokenizers, _window(block_size, margin))[0]


def split_long_texts(dataset, tokenizers: Sequence, block_size: int, *, text_column: str = "text",
                     margin: int = PUBLISHED_MARGIN, batch_size: int = 256, num_proc: int | None = None,
                     desc: str = "split long texts"):
    """Apply the published split to a ``datasets.Dataset`` (may add rows).

    Args:
        dataset: a ``datasets.Dataset`` with a string column ``text_column``. Other columns are
            copied onto every piece of a split document.
        tokenizers: the tokenizers of all models taking part (base first, then blending models).
        block_size: model max length; windows hold ``block_size - margin`` ids.
    Returns:
        a new ``datasets.Dataset`` with the same columns.
    """
    if text_column not in dataset.column_names:
        raise ValueError(f"dataset has no column {text_column!r} (columns: {dataset.column_names})")
    window = _window(block_size, margin)
    tokenizers = _check_tokenizers(tokenizers)
    columns = dataset.column_names

    def split_batch(batch):
        pieces = _split_batch(batch[text_column], tokenizers, window)
        out = {name: [] for name in columns}
        for row, texts in enumerate(pieces):
            for piece in texts:
                for name in columns:
                    out[name].append(piece if name == text_column else batch[name][row])
        return out

    return dataset.map(split_batch, batched=True, batch_size=batch_size, num_proc=num_proc, desc=desc)


def _window(block_size: int, margin: int) -> int:
    if not isinstance(block_size, int) or not isinstance(margin, int) or margin < 0:
        raise ValueError(f"block_size and margin must be ints >= 0, got {block_size!r}, {margin!r}")
    if block_size - margin < 1:
        raise ValueError(f"block_size ({block_size}) must be larger than margin ({margin})")
    return block_size - margin


def _check_tokenizers(tokenizers) -> list:
    tokenizers = list(tokenizers) if not callable(tokenizers) else [tokenizers]
    if not tokenizers:
        raise ValueError("tokenizers must hold at least one tokenizer")
    return tokenizers


def _split_batch(texts: list[str], tokenizers, window: int) -> list[list[str]]:
    tokenizers = _check_tokenizers(tokenizers)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text at row {i} is {type(text).__name__}, expected str")
    encodings = [tok(list(texts), add_special_tokens=False)["input_ids"] for tok in tokenizers]
    result = []
    for row, text in enumerate(texts):
        lengths = [len(enc[row]) for enc in encodings]
        longest = max(range(len(tokenizers)), key=lambda t: (lengths[t], -t))  # first on ties
        if lengths[longest] <= window:
            result.append([text])
            continue
        ids = encodings[longest][row]
        windows = [ids[start:start + window] for start in range(0, len(ids), window)]
        result.append(tokenizers[longest].batch_decode(windows, skip_special_tokens=True))
    return result
