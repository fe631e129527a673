"""Test helpers: realistic teacher top-k for a token sequence."""
from __future__ import annotations

import numpy as np


def teacher_topk(blend_ids, vocab_size: int, k: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A plausible teacher top-k [n, k]: row i holds the true next token (row n-1: itself),
    a repeated id now and then (to exercise de-duplication) and random ids; logits descending."""
    rng = np.random.default_rng(seed)
    a = np.asarray(blend_ids, dtype=np.int64)
    n = a.size
    ids = rng.integers(0, vocab_size, size=(n, k))
    nxt = np.r_[a[1:], a[-1:]]
    ids[:, 0] = nxt
    ids[::3, 1] = nxt[::3]  # duplicates of the first entry
    ids[1::4, 2] = a[1::4]  # the current token: often an existing, short token
    logits = -np.sort(rng.exponential(2.0, size=(n, k)), axis=1).astype(np.float32) + 5.0
    return ids, logits
