import datasets
import pytest

from fusekernels.pipeline.split import split_long_texts, split_text

from .helpers import make_word_tokenizer


@pytest.fixture(scope="module")
def word_tokenizer():
    return make_word_tokenizer("in the beginning god created heaven and earth".split())


def test_short_documents_stay_whole(char_tokenizer, word_tokenizer):
    ds = datasets.Dataset.from_dict({"text": ["in the beginning", "x" * 52], "id": [0, 1]})
    out = split_long_texts(ds, [word_tokenizer, char_tokenizer], block_size=100)
    assert out["text"] == ds["text"] and out["id"] == [0, 1]


def test_long_document_cut_by_longest_tokenization(char_tokenizer, word_tokenizer):
    text = "in the beginning god created the heaven and the earth " * 3  # 162 chars, 30 words
    ds = datasets.Dataset.from_dict({"text": ["short", text], "id": [7, 8]})
    block_size, window = 98, 50
    out = split_long_texts(ds, [word_tokenizer, char_tokenizer], block_size=block_size)
    pieces = out["text"][1:]
    # the char tokenization (162 ids) is the longest: windows of 50 ids -> 4 pieces, lossless
    assert [len(p) for p in pieces] == [window, window, window, len(text) - 3 * window]
    assert "".join(pieces) == text
    assert out["text"][0] == "short" and out["id"] == [7] + [8] * 4


def test_boundary_is_strict(char_tokenizer):
    assert split_text("a" * 50, [char_tokenizer], block_size=98) == ["a" * 50]
    assert split_text("a" * 51, [char_tokenizer], block_size=98) == ["a" * 50, "a"]


class _RecordingTokenizer:
    """Delegates to a tokenizer and records which one decoded the windows."""

    def __init__(self, tokenizer, log, name):
        self.tokenizer, self.log, self.name = tokenizer, log, name

    def __call__(self, *args, **kwargs):
        return self.tokenizer(*args, **kwargs)

    def batch_decode(self, *args, **kwargs):
        self.log.append(self.name)
        return self.tokenizer.batch_decode(*args, **kwargs)


def test_first_tokenizer_wins_ties(char_tokenizer):
    log = []
    first, second = (_RecordingTokenizer(char_tokenizer, log, name) for name in ("first", "second"))
    assert split_text("b" * 60, [first, second], block_size=78) == ["b" * 30] * 2
    assert log == ["first"]


def test_custom_margin(char_tokenizer):
    assert split_text("abcdef", [char_tokenizer], block_size=4, margin=0) == ["abcd", "ef"]


def test_bad_arguments(char_tokenizer):
    ds = datasets.Dataset.from_dict({"content": ["x"]})
    with pytest.raises(ValueError, match="no column 'text'"):
        split_long_texts(ds, [char_tokenizer], block_size=100)
    with pytest.raises(ValueError, match="larger than margin"):
        split_text("x", [char_tokenizer], block_size=48)
    with pytest.raises(ValueError, match="at least one tokenizer"):
        split_text("x", [], block_size=100)
    with pytest.raises(TypeError, match="row 0"):
        split_text(None, [char_tokenizer], block_size=100)
