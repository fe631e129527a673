"""Shared fixtures: real tokenizers from asset packages (skipped when missing) and real text."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fusekernels.tokenization import assets  # noqa: E402
from fusekernels.tokenization.profile import TokenizerProfile  # noqa: E402

CODE_SAMPLE = '''def read_config(path: str, *, strict: bool = True) -> dict[str, object]:
    """Return the settings stored in *path*.

    >>> read_config("settings.toml")["debug"]
    False
    """
    with open(path, encoding="utf-8") as fh:
        data = tomllib.load(fh)   # raises TOMLDecodeError on bad input
    if strict and "version" not in data:
        raise KeyError("version")
    return {k.lower(): v for k, v in data.items() if not k.startswith("_")}
'''

MIXED_SAMPLES = [
    "Hello world\n  def f(x): return x**2  # 你好",
    "東京は日本の首都です。北京是中国的首都。서울은 한국의 수도입니다.",
    "Emoji 🙂👍🏽 and flags 🇫🇷🇯🇵, family 👨‍👩‍👧‍👦 end.",
    "tabs\tand    many     spaces\n\n\nthree newlines\r\nwindows line",
    "Ünïcödé àccents, ligatures ﬁ ﬂ, math ∑ x² ≤ √y, arrows → ⇒ and the € sign.",
    "    leading spaces, trailing spaces    ",
]


def load_or_skip(name: str):
    try:
        return assets.load_tokenizer(name)
    except assets.AssetUnavailable as exc:
        pytest.skip(f"tokenizer {name!r} unavailable: {exc}")


@pytest.fixture(scope="session")
def tokenizer():
    """tokenizer(name) -> cached Hugging Face tokenizer (skips if its package is missing)."""
    return load_or_skip


@pytest.fixture(scope="session")
def profile():
    """profile(name) -> cached TokenizerProfile of that tokenizer."""
    def get(name: str) -> TokenizerProfile:
        return TokenizerProfile.from_tokenizer(load_or_skip(name))
    return get


@pytest.fixture(scope="session")
def texts() -> list[str]:
    """Real English (KJV), code, CJK, emoji, whitespace runs and newlines."""
    try:
        bible = assets.kjv_verses(6, start=1000)
    except assets.AssetUnavailable:
        bible = []
    joined = " ".join(assets.kjv_verses(12, start=20000)) if bible else ""
    return [t for t in bible + [joined, CODE_SAMPLE] + MIXED_SAMPLES if t]
