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
    """Delegates to a tokenizer and records which one gave the offsets of the cut."""

    def __init__(self, tokenizer, log, name):
        self.tokenizer, self.log, self.name = tokenizer, log, name

    def __call__(self, *args, **kwargs):
        if kwargs.get("return_offsets_mapping"):
            self.log.append(self.name)
        return self.tokenizer(*args, **kwargs)


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


# Multi-byte text: the published decode of id windows cuts characters (U+FFFD) and loses text; the
# cut at character offsets must give pieces that concatenate back to the document exactly.
MULTIBYTE = {
    "cjk": "起初，神创造天地。地是空虚混沌，渊面黑暗；神的灵运行在水面上。" * 40,
    "emoji": "emoji 😀👍🏽 family 👨\u200d👩\u200d👧 flags 🇫🇷🇯🇵 " * 40,
    "combining": "e\u0301a\u0300 n\u0303o\u0308 \u0915\u094d\u0937 " * 150,
    "byte_fallback": "rare 𠀋𝔘ꙮ𓀀 letters " * 60,  # byte-fallback ids in SentencePiece vocabularies
}


@pytest.mark.parametrize("name", ["mistral-v1", "gpt2"])
@pytest.mark.parametrize("kind", sorted(MULTIBYTE))
def test_multibyte_pieces_concatenate_exactly(name, kind):
    assets = pytest.importorskip("fusekernels.tokenization.assets")
    try:
        tok = assets.load_tokenizer(name)
    except assets.AssetUnavailable as err:
        pytest.skip(str(err))
    text = MULTIBYTE[kind]
    window = 50
    pieces = split_text(text, [tok], block_size=window + 48)
    assert len(pieces) > 2
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
    # each piece is at most one window of the document's ids (+1: a SentencePiece dummy prefix
    # is added again when a piece is tokenized on its own)
    assert max(len(tok(p, add_special_tokens=False)["input_ids"]) for p in pieces) <= window + 1


def test_character_longer_than_a_window_stays_whole():
    tok = pytest.importorskip("fusekernels.tokenization.assets")
    try:
        mistral = tok.load_tokenizer("mistral-v1")
    except tok.AssetUnavailable as err:
        pytest.skip(str(err))
    text = "𠀋" * 10  # 4 byte-fallback ids per character (+ the dummy prefix)
    pieces = split_text(text, [mistral], block_size=3, margin=0)
    assert "".join(pieces) == text and all(p for p in pieces)


def test_nothing_written_into_the_input_and_cache_reused(char_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("FUSEKERNELS_CACHE", str(tmp_path / "cache"))
    datasets.Dataset.from_dict({"text": ["a" * 120, "short"]}).save_to_disk(str(tmp_path / "in"))
    before = sorted(p.name for p in (tmp_path / "in").iterdir())

    def run():
        return split_long_texts(datasets.load_from_disk(str(tmp_path / "in")), [char_tokenizer], block_size=98)

    first = run()
    cached = sorted((tmp_path / "cache").rglob("*.arrow"))
    assert len(cached) == 1  # the result went to the user cache, under a deterministic name
    stamp = cached[0].stat().st_mtime_ns
    second = run()
    assert sorted((tmp_path / "cache").rglob("*.arrow")) == cached and cached[0].stat().st_mtime_ns == stamp
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == before
    assert first["text"] == second["text"] == ["a" * 50, "a" * 50, "a" * 20, "short"]


def test_a_bad_text_is_named_by_its_dataset_row(char_tokenizer):
    """Row 300 of 400 (batches of 256): the error used to say "row 44", its place in the batch."""
    texts = ["a short text"] * 400
    texts[300] = None
    with pytest.raises(TypeError, match=r"'text' at row 300 is NoneType"):
        split_long_texts(datasets.Dataset.from_dict({"text": texts}), [char_tokenizer], block_size=100)
