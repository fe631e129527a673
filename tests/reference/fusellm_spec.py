"""Pure-Python reference of the published FuseLLM alignment (spec sections 3, 4 and 5).

Written from the spec text, deliberately slow and literal: strings in, strings / ids out, one
``editdistance.eval`` call per pair as the published scripts do. It is the ground truth for the
native compatible mode (fusekernels.align) and the baseline of its benchmarks; never use it for
real data.

Conventions shared with the native code:
- a vocabulary is a list of token strings indexed by id (what ``convert_ids_to_tokens`` gives);
  looking a string up in the base vocabulary returns its FIRST id (a ``dict`` built in id order);
- an empty blending marker means "no marker replacement" (``str.replace("", m)`` would insert
  ``m`` between every character, which no tokenizer means).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import editdistance
import numpy as np


def replace_marker(token: str, blend_marker: str, base_marker: str) -> str:
    """The marker-replaced blending token ``x'`` of spec section 3."""
    return token.replace(blend_marker, base_marker) if blend_marker else token


def vocab_index(base_vocab: Sequence[str] | Mapping[str, int]) -> Mapping[str, int]:
    """str -> base id, first id wins for duplicate strings (a mapping is returned unchanged)."""
    if isinstance(base_vocab, Mapping):
        return base_vocab
    index: dict[str, int] = {}
    for i, token in enumerate(base_vocab):
        index.setdefault(token, i)
    return index


def vocab_mapping(blend_vocab: Sequence[str], base_vocab: Sequence[str],
                  blend_marker: str, base_marker: str) -> dict[str, str]:
    """Spec section 3: {x' -> base token string} for every blending token, in blending id order.

    Exact match if ``x'`` is a base token, else the base token at the smallest Levenshtein
    distance (code points, markers kept), ties to the first base token in id order.
    Cost |V_blend| x |V_base| Python calls: tiny vocabularies only.
    """
    base_set = set(base_vocab)
    mapping: dict[str, str] = {}
    for token in blend_vocab:
        x = replace_marker(token, blend_marker, base_marker)
        if x in base_set:
            mapping[x] = x
            continue
        best, best_dist = None, None
        for y in base_vocab:
            d = editdistance.eval(x, y)
            if best_dist is None or d < best_dist:
                best, best_dist = y, d
        mapping[x] = best
    return mapping


def dtw_base_to_blending(blend_tokens: Sequence[str], base_tokens: Sequence[str],
                         blend_marker: str, base_marker: str) -> list[list[int]]:
    """Spec section 4: for every base position j, the ascending blending positions aligned to it.

    Float64 matrix with +inf borders, the recurrence and traceback of the published ``dtw``
    (ties diag > up > left, as ``np.argmin`` over [diag, up, left] picks the first minimum).
    """
    n, m = len(blend_tokens), len(base_tokens)
    if n == 0 or m == 0:
        raise ValueError("dtw_base_to_blending needs two non-empty token sequences")
    a = [t.replace(blend_marker, "") for t in blend_tokens]
    b = [t.replace(base_marker, "") for t in base_tokens]
    d = np.zeros((n + 1, m + 1))
    d[0, :] = np.inf
    d[:, 0] = np.inf
    d[0, 0] = 0.0
    for i in range(n):
        for j in range(m):
            cost = editdistance.eval(a[i], b[j])
            d[i + 1, j + 1] = cost + min(d[i, j + 1], d[i + 1, j], d[i, j])
    mat = d[1:, 1:]
    i, j = n - 1, m - 1
    base_to_blend: list[list[int]] = [[] for _ in range(m)]
    while i > 0 or j > 0:
        base_to_blend[j].append(i)
        diag = mat[i - 1, j - 1] if i > 0 and j > 0 else np.inf
        up = mat[i - 1, j] if i > 0 else np.inf
        left = mat[i, j - 1] if j > 0 else np.inf
        move = int(np.argmin([diag, up, left]))
        if move == 0:
            i, j = i - 1, j - 1
        elif move == 1:
            i -= 1
        else:
            j -= 1
    base_to_blend[0].append(0)
    for group in base_to_blend:
        group.reverse()
    return base_to_blend


def transfer_topk(base_tokens: Sequence[str], blend_tokens: Sequence[str],
                  base_to_blending: Sequence[Sequence[int]],
                  topk_ids: Sequence[Sequence[int]], topk_logits: Sequence[Sequence[float]],
                  blend_vocab: Sequence[str], base_vocab: Sequence[str] | Mapping[str, int], *,
                  blend_marker: str, base_marker: str, mode: str = "hard",
                  vocab_map: Mapping[str, str] | None = None,
                  byte_level_blend: bool = False, return_matched: bool = False):
    """Spec section 5: per base position j, the blending top-k carried into base ids.

    ``topk_ids[i]`` / ``topk_logits[i]`` are the blending model's top-k at blending position i
    (ids into ``blend_vocab``). Returns (ids, logits), one list per base position, plus with
    ``return_matched`` a list of bools: the position used the blending top-k (not the one-hot).
    ``vocab_map`` (spec section 3, keyed by x') is required for mode "soft".
    """
    if mode not in ("hard", "soft"):
        raise ValueError(f"mode must be 'hard' or 'soft', got {mode!r}")
    if mode == "soft" and vocab_map is None:
        raise ValueError("mode='soft' needs vocab_map")
    index = vocab_index(base_vocab)
    out_ids: list[list[int]] = []
    out_logits: list[list[float]] = []
    out_matched: list[bool] = []
    for j, group in enumerate(base_to_blending):
        ids: list[int] = []
        logits: list[float] = []
        bt = base_tokens[j]
        matched = False
        if len(group) == 1:
            i = group[0]
            at = replace_marker(blend_tokens[i], blend_marker, base_marker)
            if (byte_level_blend and j == 0 and bt.startswith(base_marker)
                    and not at.startswith(base_marker)):
                at = base_marker + at
            matched = at == bt
            if mode == "soft" and not matched:
                matched = at in vocab_map and vocab_map[at] == bt
            if matched:
                for logit, blend_id in zip(topk_logits[i], topk_ids[i]):
                    t = replace_marker(blend_vocab[blend_id], blend_marker, base_marker)
                    if mode == "soft":
                        t = vocab_map[t]
                    if t in index and index[t] not in ids:
                        ids.append(index[t])
                        logits.append(logit)
        if not matched:
            ids.append(index[bt])
            logits.append(1.0)
        out_ids.append(ids)
        out_logits.append(logits)
        out_matched.append(matched)
    return (out_ids, out_logits, out_matched) if return_matched else (out_ids, out_logits)
