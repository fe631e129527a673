"""``fusekernels align``: every teacher's top-k on the base tokenization, stacked."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from .common import UserError, check_out, command_parser, save_dataset
from .data_options import data_option
from .options import add_options, from_namespace

HELP = "Align teachers' top-k to the base tokenization and stack them."
logger = logging.getLogger(__name__)


def _checks():
    from ..tokenization.byte_span import CHECKS

    return CHECKS


def _bad_row_policies():
    from ..pipeline.align_step import BAD_ROW_POLICIES

    return BAD_ROW_POLICIES


@dataclass(kw_only=True)
class AlignArguments:
    base: str = field(metadata={"help": "the base (student) tokenization: texts (split output, with --max-length) "
                                        "or an extract output of the base model (needed with --base-teacher)"})
    base_tokenizer: str = field(metadata={"help": "base (target) tokenizer"})
    teacher: list[str] = field(default_factory=list, metadata={
        "action": "append", "help": "blending extraction folder (repeatable)"})
    teacher_tokenizer: list[str] = field(default_factory=list, metadata={
        "action": "append", "help": "its tokenizer (repeatable, same order)"})
    method: str = data_option("method")
    fallback: str = data_option("fallback")
    vocab_map: list[str] | None = field(default=None, metadata={
        "action": "append", "help": "soft-mode map per teacher (.json or .npz)"})
    base_teacher: bool = data_option("base_teacher", help=(
        "the base model's own top-k is teacher 0, as in FuseLLM's continual training (--base: its extract "
        "output)"))
    logits_dtype: str = data_option("logits_dtype")
    max_length: int | None = field(default=None, metadata={
        "min": 1, "help": "tokenize raw base texts to this length (as extract's --max-length; prepare: --block-size)"})
    check: str = field(default="prefix", metadata={
        "choices": _checks,
        "help": "how a base row and a teacher row are verified to cover the same text: equal byte lengths, equal "
                "bytes, one a byte prefix of the other (extraction truncates), or not at all"})
    on_bad_row: str = field(default="error", metadata={
        "choices": _bad_row_policies,
        "help": "a row failing the checks stops the run (error) or is dropped and counted (skip)"})
    out: str = field(metadata={"help": "output dataset folder"})
    text_column: str = field(default="text", metadata={"help": "column holding the text"})
    num_proc: int | None = field(default=None, metadata={"min": 1,
                                                          "help": "worker processes for datasets.map"})


def build_parser():
    parser = command_parser("align", HELP)
    add_options(parser, AlignArguments)
    return parser


def run(args) -> None:
    from ..pipeline.align_step import align_teachers, alignment_stats
    from ..pipeline.io import load_rows, load_tokenizer

    a = from_namespace(AlignArguments, args)
    if len(a.teacher) != len(a.teacher_tokenizer):
        raise UserError(f"{len(a.teacher)} --teacher but {len(a.teacher_tokenizer)} --teacher-tokenizer")
    check_out(a.out, a.base, a.base_tokenizer, *a.teacher, *a.teacher_tokenizer, *(a.vocab_map or []))
    base_tok = load_tokenizer(a.base_tokenizer)
    base = load_rows(a.base)
    if "input_ids" not in base.column_names:
        if a.base_teacher:
            raise UserError(f"--base {a.base} has no top-k columns: --base-teacher needs the base model's extract "
                            "output there (or leave out --base-teacher)")
        if a.max_length is None:
            raise UserError("--base holds raw texts: pass --max-length to tokenize them")
        from ..pipeline.extract import tokenize_texts

        base = tokenize_texts(base_tok, base, max_length=a.max_length, text_column=a.text_column)
    teacher_toks = [load_tokenizer(t) for t in a.teacher_tokenizer]
    maps = None
    if a.vocab_map:
        maps = [load_vocab_map(p, base_tok, t) for p, t in zip(a.vocab_map, teacher_toks)]
        if len(maps) != len(teacher_toks):
            raise UserError(f"{len(a.vocab_map)} --vocab-map for {len(teacher_toks)} teachers")
    out, skipped = align_teachers(base, [load_rows(p) for p in a.teacher], base_tokenizer=base_tok,
                                  teacher_tokenizers=teacher_toks, method=a.method, include_base_teacher=a.base_teacher,
                                  fallback=a.fallback, vocab_maps=maps, text_column=a.text_column,
                                  logits_dtype=a.logits_dtype,
                                  num_proc=a.num_proc, check=a.check, on_bad_row=a.on_bad_row, return_skipped=True)
    if skipped:
        rows = ", ".join(str(r) for r, _ in skipped[:10]) + (", ..." if len(skipped) > 10 else "")
        logger.warning(f"align: skipped {len(skipped)} of {len(out) + len(skipped)} rows that fail the checks "
                       f"(rows {rows}; first: {skipped[0][1]})")
    save_dataset(out, a.out)
    stats = alignment_stats(out)
    names = (["base"] if a.base_teacher else []) + a.teacher
    rates = ", ".join(f"{n}: {r:.1%}" for n, r in zip(names, stats.rates))
    print(f"align: {len(out)} sequences, {stats.positions} base positions; with a teacher distribution: {rates}")


def load_vocab_map(path, base_tok, blend_tok):
    """A vocabulary map file (.json or .npz) of the tokenizer pair."""
    from ..tokenization.vocab_map import VocabMap

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary map not found: {path}")
    loader = VocabMap.load_json if path.suffix == ".json" else VocabMap.load_npz
    return loader(path, base_tok, blend_tok)
