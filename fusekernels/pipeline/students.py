"""Fresh, randomly initialised students for trying fusion out: ``CONFIG:TOKENIZER`` names.

A student spec such as ``tiny:mistral-v1`` is a small Llama configuration (:data:`STUDENT_CONFIGS`)
for a tokenizer (a bundled name, a folder or a file, see :func:`fusekernels.pipeline.io.load_tokenizer`):
its vocabulary size is the tokenizer's, its BOS / EOS are the tokenizer's and its pad token is the
tokenizer's pad, or EOS when the tokenizer has none (Llama / Mistral). ``fusekernels train --model
tiny:mistral-v1`` (or ``--student``) trains such a student from scratch; the weights depend only on
the seed. Pretrained students are given as a path or a Hub model id instead.

======  ==========  ======  =====  ==========================================================
config  hidden      layers  heads  parameters besides the embedding (tied with the LM head)
======  ==========  ======  =====  ==========================================================
tiny    64          2       4      about 0.1M (+ 64 x vocab: 2.0M for a 32,000-token vocab)
small   256         4       8      about 2.6M (+ 256 x vocab: 8.2M for a 32,000-token vocab)
======  ==========  ======  =====  ==========================================================
"""
from __future__ import annotations

import re
from pathlib import Path

__all__ = ["STUDENT_CONFIGS", "is_student_spec", "parse_student_spec", "build_student", "fresh_student",
           "student_from_spec"]

# name -> LlamaConfig sizes (intermediate size 3 x hidden, grouped-query attention with heads / 2 KV heads)
STUDENT_CONFIGS = {
    "tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 4},
    "small": {"hidden_size": 256, "num_layers": 4, "num_heads": 8},
}
MAX_POSITIONS = 4096  # rotary positions: any block size up to this works
_SPEC = re.compile(r"^([A-Za-z][\w-]*):(.+)$")


def is_student_spec(spec) -> bool:
    """True when ``spec`` reads ``CONFIG:TOKENIZER`` (``tiny:mistral-v1``) and is no existing path
    (:func:`parse_student_spec` then checks the config name)."""
    return isinstance(spec, str) and bool(_SPEC.match(spec)) and not Path(spec).exists()


def parse_student_spec(spec: str) -> tuple[str, str]:
    """``(config name, tokenizer)`` of ``CONFIG:TOKENIZER``; ``ValueError`` naming it."""
    match = _SPEC.match(str(spec))
    if not match:
        raise ValueError(f"student {spec!r} must read CONFIG:TOKENIZER, e.g. tiny:mistral-v1 "
                         f"(configs: {', '.join(STUDENT_CONFIGS)})")
    if match.group(1) not in STUDENT_CONFIGS:
        raise ValueError(f"student {spec!r}: unknown config {match.group(1)!r}; one of {', '.join(STUDENT_CONFIGS)}")
    return match.group(1), match.group(2)


def build_student(vocab_size: int, tokenizer, *, seed: int, hidden_size: int = 128, num_layers: int = 2,
                  num_heads: int = 4, max_positions: int = 128):
    """A small ``LlamaForCausalLM`` (float32, tied embeddings) for ``tokenizer``: ``vocab_size``
    rows, its BOS / EOS, pad = its pad or else EOS; the same weights for the same ``seed``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=3 * hidden_size,
                      num_hidden_layers=num_layers, num_attention_heads=num_heads,
                      num_key_value_heads=max(1, num_heads // 2), max_position_embeddings=max_positions,
                      tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=pad)
    return LlamaForCausalLM(cfg)


def fresh_student(config: str, tokenizer, *, seed: int, name: str | None = None):
    """A new student of the named ``config`` (:data:`STUDENT_CONFIGS`) for ``tokenizer``: its
    vocabulary covers every id of the tokenizer (``len(tokenizer)``, added tokens included).
    ``ValueError`` for a tokenizer without EOS (the pipeline ends every text with it)."""
    if tokenizer.eos_token_id is None:
        raise ValueError(f"student {name or config!r}: its tokenizer has no EOS token")
    model = build_student(len(tokenizer), tokenizer, seed=seed, max_positions=MAX_POSITIONS,
                          **STUDENT_CONFIGS[config])
    if name:
        model.config.name_or_path = name
    return model


def student_from_spec(spec: str, *, seed: int = 0):
    """``(model, tokenizer)``: a fresh student from ``CONFIG:TOKENIZER`` (see module docstring and
    :func:`fresh_student`); ``ValueError`` for a malformed spec or a tokenizer without EOS."""
    from .io import load_tokenizer

    config, tokenizer_spec = parse_student_spec(spec)
    tokenizer = load_tokenizer(tokenizer_spec)
    return fresh_student(config, tokenizer, seed=seed, name=spec), tokenizer
