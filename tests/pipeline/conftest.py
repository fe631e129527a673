"""Session fixtures for the pipeline tests (tiny tokenizers and models, no network)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from .helpers import make_char_tokenizer, make_tiny_llama  # noqa: E402


@pytest.fixture(scope="session")
def char_tokenizer():
    return make_char_tokenizer()


@pytest.fixture(scope="session")
def tiny_llama(char_tokenizer):
    return make_tiny_llama(len(char_tokenizer))
