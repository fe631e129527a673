"""Alignment modes are one registry: a toy mode registered in a test reaches align_dataset,
align_teachers and the command line's ``align --method``, with no other change."""
import json

import datasets
import numpy as np
import pytest

from fusekernels.align.topk_transfer import TopKResult
from fusekernels.pipeline.align_step import align_teachers
from fusekernels.tokenization import align_dataset
from fusekernels.tokenization.registry import ALIGNMENT_MODES, AlignmentMode
from tests.pipeline.helpers import make_char_tokenizer

TEXTS = ["In the beginning God created the heaven.", "And the earth was without form."]
K = 3
CALLS = []


def _one_hot(rows, base, blend, *, tables, texts, match, check, threads):
    """Every base position gets the one-hot pair (its own id, logit 1.0); none is matched."""
    CALLS.append((tables, len(rows)))
    out = []
    for base_ids, _, _, _ in rows:
        m = len(base_ids)
        result = TopKResult(ids=np.asarray(base_ids, np.int32)[:, None], logits=np.ones((m, 1), np.float32),
                            counts=np.ones(m, np.int32))
        out.append((result, np.zeros(m, bool)))
    return out


@pytest.fixture
def toy_mode():
    mode = ALIGNMENT_MODES.register(AlignmentMode("toy_one_hot", _one_hot, build_tables=lambda b, a, m=None: "tables",
                                                  help="one-hot on the current token"))
    CALLS.clear()
    yield mode
    ALIGNMENT_MODES.unregister("toy_one_hot")


def _extraction(tokenizer, seed):
    """What extract_teacher_topk stores (input_ids, top-k, CE), with random top-k."""
    rng = np.random.default_rng(seed)
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in TEXTS]
    vocab = len(tokenizer)
    return datasets.Dataset.from_dict(
        {"text": TEXTS, "input_ids": ids,
         "topk_ids": [rng.choice(vocab, (len(x), K)).astype(np.int32) for x in ids],
         "topk_logits": [-np.sort(-rng.normal(size=(len(x), K)), axis=1).astype(np.float32) for x in ids],
         "metric_ce": [1.0, 2.0]},
        features=datasets.Features({"text": datasets.Value("string"),
                                    "input_ids": datasets.List(datasets.Value("int32")),
                                    "topk_ids": datasets.Array2D((None, K), "int32"),
                                    "topk_logits": datasets.Array2D((None, K), "float32"),
                                    "metric_ce": datasets.Value("float32")}))


def test_toy_mode_reaches_align_dataset(toy_mode):
    tok = make_char_tokenizer()
    data = _extraction(tok, 0)
    columns = {"blend_ids": "input_ids", "topk_ids": "topk_ids", "topk_logits": "topk_logits",
               "metric_ce": "metric_ce"}
    out = align_dataset(data, tok, tok, method="toy_one_hot", columns=columns, return_mask=True).with_format("numpy")
    assert CALLS and CALLS[0][0] == "tables"  # its tables reach its row function
    for r in range(len(TEXTS)):
        row = out[r]
        assert np.array_equal(row["aligned_topk_ids"][:, 0], row["input_ids"])
        assert (row["aligned_topk_ids"][:, 1:] == -1).all() and not row["aligned_matched"].any()


@pytest.mark.parametrize("fallback", ["published", "absent"])
def test_toy_mode_reaches_align_teachers(toy_mode, fallback):
    tok = make_char_tokenizer()
    base, teacher = _extraction(tok, 0), _extraction(tok, 1)
    out = align_teachers(base, [teacher], base_tokenizer=tok, teacher_tokenizers=[tok], method="toy_one_hot",
                         fallback=fallback, include_base_teacher=True).with_format("numpy")
    for r in range(len(TEXTS)):
        row = out[r]
        assert row["teacher_aligned"].tolist() == [len(row["input_ids"]), 0]
        toy = row["teacher_logits"][:, 1]
        if fallback == "absent":
            assert np.isneginf(toy).all()
        else:  # the aligner's own one-hot pair is kept
            assert np.array_equal(row["teacher_ids"][:, 1, 0], row["input_ids"]) and (toy[:, 0] == 1).all()


def test_unknown_mode_lists_the_registered_ones(toy_mode):
    tok = make_char_tokenizer()
    with pytest.raises(ValueError, match=r"method must be one of \('byte_span', 'compat_hard', 'compat_soft', "
                                         r"'toy_one_hot'\), got 'nope'"):
        align_dataset(_extraction(tok, 0), tok, tok, method="nope",
                      columns={"blend_ids": "input_ids", "topk_ids": "topk_ids", "topk_logits": "topk_logits",
                               "metric_ce": "metric_ce"})


def test_toy_mode_reaches_the_command_line(toy_mode, tmp_path, capsys):
    from fusekernels.cli import main

    tok = make_char_tokenizer()
    tok.save_pretrained(tmp_path / "tok")
    _extraction(tok, 0).save_to_disk(str(tmp_path / "base"))
    _extraction(tok, 1).save_to_disk(str(tmp_path / "teacher"))
    argv = ["align", "--base", tmp_path / "base", "--base-tokenizer", tmp_path / "tok", "--teacher",
            tmp_path / "teacher", "--teacher-tokenizer", tmp_path / "tok", "--method", "toy_one_hot",
            "--base-teacher", "--fallback", "absent", "--out", tmp_path / "out"]
    assert main([str(a) for a in argv]) == 0
    assert "with a teacher distribution: base: 100.0%" in capsys.readouterr().out
    out = datasets.load_from_disk(str(tmp_path / "out"))
    assert [row for row in out["teacher_aligned"]] == [[len(x), 0] for x in out["input_ids"]]
    with pytest.raises(SystemExit):
        main(["align", "--help"])
    assert "toy_one_hot" in capsys.readouterr().out
    # and from a config file
    config = {"method": "toy_one_hot", "fallback": "absent", "base_teacher": True}
    (tmp_path / "align.json").write_text(json.dumps(config))
    flags = [str(a) for a in argv[1:9]] + ["--out", str(tmp_path / "o2")]
    assert main(["align", str(tmp_path / "align.json")] + flags) == 0
    assert datasets.load_from_disk(str(tmp_path / "o2"))["teacher_aligned"] == out["teacher_aligned"]
