"""Small tokenizers and models built inside the tests (no files, no network)."""
import contextlib
import logging

import torch

PRINTABLE = [chr(c) for c in range(32, 127)] + ["\n"]


def make_char_tokenizer():
    """One token per ASCII character; decoding concatenates, so decode(encode(x)) == x."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<eos>": 0, "<pad>": 1}
    for ch in PRINTABLE:
        vocab.setdefault(ch, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<pad>")


def make_word_tokenizer(words):
    """One token per whitespace-separated word (unknown words -> <unk>); decode joins with spaces."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<eos>": 0, "<pad>": 1, "<unk>": 2}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")


def make_tiny_llama(vocab_size, seed=0, hidden=32, layers=2, max_positions=256):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=max_positions, pad_token_id=1, eos_token_id=0, bos_token_id=0)
    return LlamaForCausalLM(config).eval()


def asset(loader: str, *args):
    """``fusekernels.tokenization.assets.<loader>(*args)``, or skip the test when the asset
    package is not installed."""
    import pytest

    assets = pytest.importorskip("fusekernels.tokenization.assets")
    try:
        return getattr(assets, loader)(*args)
    except assets.AssetUnavailable as err:
        pytest.skip(str(err))


@contextlib.contextmanager
def log_lines(lines: list, level=logging.INFO):
    """Collect the messages of the ``fusekernels`` loggers into ``lines`` (at ``level`` and up)."""
    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    logger = logging.getLogger("fusekernels")
    handler, old = Collect(level), logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
