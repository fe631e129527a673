"""``fusekernels prepare``: texts -> split -> extract (cached) -> align -> pack in one command."""
from __future__ import annotations

from dataclasses import dataclass, field

from .common import UserError, command_parser, save_dataset
from .data_options import data_option
from .options import add_options, from_namespace

HELP = ("Texts -> split -> extract every teacher (disk cache) -> align to the student -> pack, in one command "
        "(build_fusion_dataset).")


@dataclass(kw_only=True)
class PrepareArguments:
    data: str = field(metadata={"help": "texts (.jsonl/.json/.parquet/.csv/.txt or a saved dataset)"})
    student_tokenizer: str = field(metadata={"help": "the target model's tokenizer (path or asset name)"})
    teacher: list[str] = field(metadata={"action": "append",
                                         "help": "teacher model: folder, .gguf, bundled model name (smollm2, gemma3; "
                                                 "see fusekernels assets) or Hub model id (repeatable)"})
    teacher_tokenizer: list[str] = field(default_factory=list, metadata={
        "action": "append", "help": "its tokenizer (repeatable, same order; default: the teacher's own)"})
    base_model: str | None = field(default=None, metadata={
        "help": "the student model itself (path, bundled model name or Hub model id): the base teacher's model "
                "(with --base-teacher)"})
    base_teacher: bool = data_option("base_teacher", help=(
        "the base (student) model's own top-k, from --base-model, is teacher 0, as in FuseLLM's continual "
        "training"))
    block_size: int = field(default=2048, metadata={
        "min": 1, "help": "training block length; also the split length and the extraction length (the step "
                          "route's split --block-size, extract / align --max-length and pack --block-size)"})
    margin: int = data_option("margin")
    k: int = data_option("k")
    batch_size: int = data_option("batch_size")
    method: str = data_option("method")
    fallback: str = data_option("fallback")
    start_tokens: str = data_option("start_tokens")
    per_token_ce: bool = data_option("per_token_ce")
    logits_dtype: str = data_option("logits_dtype")
    cache_dir: str | None = field(default=None, metadata={
        "help": "teacher-output cache folder (default: the user cache folder)"})
    cache: bool = field(default=True, metadata={"help": "use the teacher-output cache",
                                                "negate_help": "do not use the teacher-output cache"})
    messages_column: str = field(default="messages", metadata={
        "help": "chat data: column of conversations (role/content lists); when --data has it, each model renders "
                "them with its chat template, only assistant tokens get labels, and each conversation is truncated "
                "to --block-size tokens"})
    chat_template: list[str] | None = field(default=None, metadata={
        "metavar": "FILE", "help": "chat data: a Jinja template file per teacher (same order; '-' or 'none' for its "
                                   "tokenizer's own)"})
    student_chat_template: str | None = field(default=None, metadata={
        "metavar": "FILE", "help": "chat data: a Jinja template file for the student (default: its tokenizer's own)"})
    out: str = field(metadata={"help": "output folder for the packed dataset"})
    text_column: str = field(default="text", metadata={"help": "column holding the text"})
    num_proc: int | None = field(default=None, metadata={"min": 1,
                                                          "help": "worker processes for datasets.map"})


def build_parser():
    parser = command_parser("prepare", HELP)
    add_options(parser, PrepareArguments)
    return parser


def run(args) -> None:
    from ..pipeline.api import build_fusion_dataset
    from ..pipeline.chat import read_chat_template
    from ..pipeline.io import check_model_path, load_rows, load_tokenizer, model_tokenizer
    from ..storage import check_output_dir

    a = from_namespace(PrepareArguments, args)
    tokenizers = a.teacher_tokenizer or [model_tokenizer(t) for t in a.teacher]
    if len(tokenizers) != len(a.teacher):
        raise UserError(f"{len(a.teacher)} --teacher but {len(tokenizers)} --teacher-tokenizer")
    if a.chat_template is not None and len(a.chat_template) != len(a.teacher):
        raise UserError(f"{len(a.teacher)} --teacher but {len(a.chat_template)} --chat-template "
                        "(one per teacher; '-' for the tokenizer's own)")
    if a.base_teacher and a.base_model is None:
        raise UserError("--base-teacher needs --base-model (the student model whose own top-k is teacher 0)")
    if a.base_model is not None and not a.base_teacher:
        raise UserError("--base-model is the base teacher's model: add --base-teacher to fuse its own top-k "
                        "(off by default, as in align)")
    templates = [read_chat_template(t, arg="--chat-template") for t in a.chat_template or []] or None
    student_template = read_chat_template(a.student_chat_template, arg="--student-chat-template")
    check_output_dir(a.out, inputs=[a.data, *a.teacher], arg="--out")
    # every model is checked (not loaded) before the data is read and split
    for teacher in a.teacher:
        check_model_path(teacher, arg="--teacher")
    if a.base_model is not None:
        check_model_path(a.base_model, arg="--base-model")
    data = load_rows(a.data)
    chat = a.messages_column in data.column_names
    if not chat and a.text_column not in data.column_names:
        raise UserError(f"--data has neither a {a.text_column!r} (--text-column) nor a {a.messages_column!r} "
                        f"(--messages-column) column; columns: {data.column_names}")
    if not chat and (templates or a.student_chat_template):
        raise UserError(f"chat templates given but --data has no {a.messages_column!r} column (--messages-column)")
    teachers = [(model, load_tokenizer(tok)) for model, tok in zip(a.teacher, tokenizers)]
    packed, report = build_fusion_dataset(
        data, load_tokenizer(a.student_tokenizer), teachers, block_size=a.block_size, k=a.k,
        split_margin=a.margin, base_model=a.base_model if a.base_teacher else None, method=a.method,
        fallback=a.fallback, text_column=a.text_column, batch_size=a.batch_size, logits_dtype=a.logits_dtype,
        cache=(a.cache_dir or True) if a.cache else False, num_proc=a.num_proc, return_report=True,
        messages_column=a.messages_column, chat_templates=templates, student_chat_template=student_template,
        start_tokens=a.start_tokens, chunks=a.per_token_ce)
    save_dataset(packed, a.out)
    coverage = ", ".join(f"{t['name']} {t['coverage']:.1%} ({t['cache']})" for t in report.teachers)
    kind = (f"chat run, {report.texts} conversations -> {report.blocks} blocks of {a.block_size} tokens "
            f"({report.label_tokens} assistant label tokens kept)" if report.chat else
            f"{report.texts} texts -> {report.blocks} blocks of {a.block_size} tokens")
    print(f"prepare: {kind} in {a.out}; alignment coverage: {coverage}")
