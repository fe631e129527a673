"""``fusekernels extract``: one model's top-k logits and CE metric over texts, resumable."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..pipeline import defaults
from .common import check_out, command_parser, torch_dtype
from .data_options import data_option
from .options import add_options, from_namespace

HELP = "Top-k logits and per-sequence CE metric of one model, resumable."


def _precisions():
    from ..loss.registry import PRECISIONS

    return PRECISIONS.names()


def _model_dtypes():
    from ..pipeline.io import MODEL_DTYPES

    return MODEL_DTYPES


@dataclass(kw_only=True)
class ExtractArguments:
    model: str = field(metadata={"help": "model folder, .gguf file, bundled model name (smollm2, gemma3; see "
                                         "fusekernels assets) or Hub model id"})
    tokenizer: str | None = field(default=None, metadata={"help": "tokenizer (default: the model's)"})
    data: str = field(metadata={"help": "texts (file or saved dataset)"})
    k: int = data_option("k")
    batch_size: int = data_option("batch_size")
    max_length: int | None = field(default=None, metadata={
        "min": 1, "help": "truncation length in text tokens (default: the tokenizer's; prepare uses --block-size)"})
    shard_size: int = field(default=defaults.SHARD_SIZE, metadata={
        "min": 1, "help": "sequences per output shard (texts are batched by length within a shard, as prepare does)"})
    per_token_ce: bool = data_option("per_token_ce")
    start_tokens: str = data_option("start_tokens")
    logits_dtype: str = data_option("logits_dtype")
    device: str | None = field(default=None, metadata={"help": "e.g. cuda, cpu (default: CUDA when available, "
                                                                "else CPU)"})
    dtype: str | None = field(default=None, metadata={"choices": _model_dtypes,
                                                       "help": "model weights (default: as saved)"})
    precision: str = field(default="fp32", metadata={
        "choices": _precisions,
        "help": "top-k and CE of the fp32 logits, or of fp16 logits with fp16 CE as published"})
    out: str = field(metadata={"help": "output folder (shards; rerun to resume)"})
    text_column: str = field(default="text", metadata={"help": "column holding the text"})


def build_parser():
    parser = command_parser("extract", HELP)
    add_options(parser, ExtractArguments)
    return parser


def run(args) -> None:
    import numpy as np

    from ..pipeline.extract import META_NAME, extract_teacher_topk, model_name, padding_fraction
    from ..pipeline.io import load_model, load_rows, load_tokenizer, model_tokenizer, resolve_model
    from ..tokenization.batch import arrow_lists

    a = from_namespace(ExtractArguments, args)
    check_out(a.out, a.data, a.model, a.tokenizer, resume_marker=META_NAME)
    model_path = resolve_model(a.model)  # before the tokenizer: a missing model is reported as such
    data = load_rows(a.data)
    tokenizer = load_tokenizer(a.tokenizer or model_tokenizer(a.model, model_path))
    model = load_model(model_path, **({"dtype": torch_dtype(a.dtype)} if a.dtype else {}))
    out = extract_teacher_topk(model, tokenizer, data, k=a.k, batch_size=a.batch_size, max_length=a.max_length,
                               text_column=a.text_column, per_token_ce=a.per_token_ce, logits_dtype=a.logits_dtype,
                               output_dir=a.out, shard_size=a.shard_size, device=a.device, precision=a.precision,
                               start_tokens=a.start_tokens, name=model_name(a.model))
    lengths = np.diff(arrow_lists(out.with_format("arrow")["input_ids"])[1])
    padding = [padding_fraction(lengths.tolist(), batch_size=a.batch_size, shard_size=a.shard_size, grouped=g)
               for g in (False, True)]
    print(f"extract: {len(out)} sequences, {int(lengths.sum())} tokens, top-{a.k} stored in {a.out}; "
          f"padding {padding[1]:.1%} of the forward positions ({padding[0]:.1%} without length grouping)")
