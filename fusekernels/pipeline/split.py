"""Step 1 of the FuseLLM data pipeline: split documents that are too long for any tokenizer.

Published rule: every document is tokenized by every tokenizer without special
tokens. When some tokenization is longer than ``block_size - margin`` ids (margin 48), the
*longest* tokenization (first tokenizer on ties) is cut into consecutive windows of
``block_size - margin`` ids and those texts replace the document. Otherwise the document stays
whole.

The published code decodes each window of ids back to text, which cuts multi-byte characters
(U+FFFD in CJK text, whole windows lost with byte-fallback tokens) and drops what decoding does
not reproduce. Here the *original string* is cut at the character offsets of the window
boundaries (the tokenizer's offset mapping; needs a fast tokenizer), so the pieces concatenate
back to the document exactly. A boundary that falls inside the tokens of one character (byte
fallback, a character split over several byte-level tokens) moves back to that character's first
token, so no window exceeds ``block_size - margin`` ids of the document's tokenization (a
window shrinks by those few ids instead).
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

    def split_batch(batch, indices):
        bad = next((i for i, text in zip(indices, batch[text_column]) if not isinstance(text, str)), None)
        if bad is not None:  # named by its row in the dataset, not its place in the batch
            raise TypeError(f"{text_column!r} at row {bad} is {type(batch[text_column][indices.index(bad)]).__name__}, "
                            "expected str")
        pieces = _split_batch(batch[text_column], tokenizers, window)
        out = {name: [] for name in columns}
        for row, texts in enumerate(pieces):
            for piece in texts:
                for name in columns:
                    out[name].append(piece if name == text_column else batch[name][row])
        return out

    from fusekernels import __version__
    from fusekernels.fingerprint import json_fingerprint, tokenizer_fingerprint
    from fusekernels.storage import cached_map

    # deterministic, and written to the user cache (never next to the input dataset); a tokenizer
    # that cannot be fingerprinted (a stand-in object) keeps the result in memory instead
    try:
        tokenizer_fps = [tokenizer_fingerprint(t) for t in tokenizers]
    except (AttributeError, TypeError):
        return dataset.map(split_batch, batched=True, with_indices=True, batch_size=batch_size, num_proc=num_proc,
                           desc=desc, keep_in_memory=True)
    fingerprint = json_fingerprint(["split", __version__, dataset._fingerprint, text_column, window, batch_size,
                                    tokenizer_fps])[:16]
    return cached_map(dataset, split_batch, label="split", fingerprint=fingerprint, batched=True, with_indices=True,
                      batch_size=batch_size, num_proc=num_proc, desc=desc)


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
        result.append(_cut_at_offsets(text, tokenizers[longest], window))
    return result


def _cut_at_offsets(text: str, tokenizer, window: int) -> list[str]:
    """Pieces of ``text`` holding consecutive windows of at most ``window`` of its token ids
    (see the module docstring); ``"".join(pieces) == text``."""
    try:
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError:
        raise ValueError("split needs fast tokenizers (offset mapping) to cut texts at token boundaries; "
                         f"{type(tokenizer).__name__} is a slow one") from None
    offsets = [tuple(o) for o in encoding["offset_mapping"]]
    n = len(offsets)
    cuts, start = [0], 0
    while n - start > window:
        end = start + window  # first token of the next window
        # back off while token `end` shares a character with token end - 1 (one character, several ids)
        e = end
        while e > start + 1 and offsets[e][0] < offsets[e - 1][1]:
            e -= 1
        if offsets[e][0] < offsets[e - 1][1]:  # one character longer than a window: keep it whole
            e = end
            while e < n and offsets[e][0] < offsets[e - 1][1]:
                e += 1
            if e == n:
                break
        # cut after token e - 1 (so a leading space stays with the following word, as decoding does)
        cut = min(max(offsets[e - 1][1], cuts[-1]), len(text))
        cuts.append(cut)
        start = e
    cuts.append(len(text))
    return [text[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]
