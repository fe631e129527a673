"""``fusekernels`` command line: the FuseLLM / FuseChat data pipeline, training, merging and a demo.

Each pipeline step reads the previous step's output folder and writes its own::

    fusekernels split   --data docs.jsonl --tokenizer base_dir teacher.gguf --block-size 2048 --out split/
    fusekernels extract --model base_dir --data split/ --out base_topk/
    fusekernels extract --model teacher.gguf --data split/ --out teacher_topk/
    fusekernels align   --base base_topk/ --base-tokenizer base_dir --teacher teacher_topk/ \\
                        --teacher-tokenizer teacher.gguf --out aligned/
    fusekernels pack    --data aligned/ --block-size 2048 --out packed/
    fusekernels train   --model base_dir --data packed/ --output_dir student/ --max_steps 1000  # or: train run.yaml
    fusekernels merge   --targets student_a/ student_b/ --base base_dir --out merged/

``fusekernels demo`` runs the whole chain on small real assets. User errors (missing files, bad
arguments, malformed data) print one line and exit with status 2; ``--debug`` shows tracebacks.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ._optional import extra_hint

EXIT_USER_ERROR = 2


class UserError(Exception):
    """An error caused by the command line or the input files (no traceback shown)."""


def _user_errors():
    # OSError: unreadable inputs, read-only outputs, a full disk (each reported with its path)
    errors = [UserError, OSError, ValueError, ImportError]
    try:
        from fusekernels.tokenization.assets import AssetUnavailable

        errors.append(AssetUnavailable)
    except ImportError:
        pass
    try:  # weights files that cannot be read or written (damaged input, full disk)
        from safetensors import SafetensorError

        errors.append(SafetensorError)
    except ImportError:
        pass
    return tuple(errors)


# ---------------------------------------------------------------------- commands
def cmd_split(args):
    from .pipeline.io import load_rows, load_tokenizer
    from .pipeline.split import split_long_texts

    _check_out(args.out, args.data, *args.tokenizer)
    data = load_rows(args.data)
    tokenizers = [load_tokenizer(t) for t in args.tokenizer]
    out = split_long_texts(data, tokenizers, args.block_size, text_column=args.text_column, margin=args.margin,
                           num_proc=args.num_proc)
    _save(out, args.out)
    print(f"split: {len(data)} documents -> {len(out)} texts in {args.out}")


def cmd_extract(args):
    import numpy as np

    from .pipeline.extract import META_NAME, extract_teacher_topk, padding_fraction
    from .pipeline.io import check_model_path, load_model, load_rows, load_tokenizer
    from .tokenization.batch import arrow_lists

    _check_out(args.out, args.data, args.model, args.tokenizer, resume_marker=META_NAME)
    check_model_path(args.model)  # before the tokenizer: a missing model is reported as such
    data = load_rows(args.data)
    tokenizer = load_tokenizer(args.tokenizer or args.model)
    model = load_model(args.model, **({"dtype": _torch_dtype(args.dtype)} if args.dtype else {}))
    out = extract_teacher_topk(model, tokenizer, data, k=args.k, batch_size=args.batch_size,
                               max_length=args.max_length, text_column=args.text_column,
                               per_token_ce=args.per_token_ce, logits_dtype=args.logits_dtype,
                               output_dir=args.out, shard_size=args.shard_size, device=args.device,
                               precision=args.precision)
    lengths = np.diff(arrow_lists(out.with_format("arrow")["input_ids"])[1])
    padding = [padding_fraction(lengths.tolist(), batch_size=args.batch_size, shard_size=args.shard_size, grouped=g)
               for g in (False, True)]
    print(f"extract: {len(out)} sequences, {int(lengths.sum())} tokens, top-{args.k} stored in {args.out}; "
          f"padding {padding[1]:.1%} of the forward positions ({padding[0]:.1%} without length grouping)")


def cmd_vocab_map(args):
    from .pipeline.io import load_rows, load_tokenizer
    from .tokenization.vocab_map import build_vocab_map

    from .storage import check_output_file

    check_output_file(args.out, suffixes=(".json", ".npz"),
                      inputs=_existing(args.base_tokenizer, args.blend_tokenizer, args.corpus))
    corpus = None
    if args.corpus:
        corpus = load_rows(args.corpus)[args.text_column]
    vmap = build_vocab_map(load_tokenizer(args.base_tokenizer), load_tokenizer(args.blend_tokenizer),
                           mode=args.mode, corpus=corpus)
    out = Path(args.out)
    (vmap.save_json if out.suffix.lower() == ".json" else vmap.save_npz)(out)  # atomic writes
    print(f"vocab-map: {len(vmap)} blending tokens, {vmap.exact_rate:.1%} exact, written to {out}")


def cmd_align(args):
    from .pipeline.align_step import align_teachers, alignment_stats
    from .pipeline.io import load_rows, load_tokenizer

    if len(args.teacher) != len(args.teacher_tokenizer):
        raise UserError(f"{len(args.teacher)} --teacher but {len(args.teacher_tokenizer)} --teacher-tokenizer")
    _check_out(args.out, args.base, args.base_tokenizer, *args.teacher, *args.teacher_tokenizer,
               *(args.vocab_map or []))
    base_tok = load_tokenizer(args.base_tokenizer)
    base = load_rows(args.base)
    if "input_ids" not in base.column_names:
        if args.base_teacher:
            raise UserError(f"{args.base} has no top-k columns; extract the base model first or pass --no-base-teacher")
        if args.max_length is None:
            raise UserError("--base holds raw texts: pass --max-length to tokenize them")
        from .pipeline.extract import tokenize_texts

        base = tokenize_texts(base_tok, base, max_length=args.max_length, text_column=args.text_column)
    teacher_toks = [load_tokenizer(t) for t in args.teacher_tokenizer]
    maps = None
    if args.vocab_map:
        maps = [_load_vocab_map(p, base_tok, t) for p, t in zip(args.vocab_map, teacher_toks)]
        if len(maps) != len(teacher_toks):
            raise UserError(f"{len(args.vocab_map)} --vocab-map for {len(teacher_toks)} teachers")
    out, skipped = align_teachers(base, [load_rows(p) for p in args.teacher], base_tokenizer=base_tok,
                                  teacher_tokenizers=teacher_toks, method=args.method,
                                  include_base_teacher=args.base_teacher, fallback=args.fallback, vocab_maps=maps,
                                  text_column=args.text_column, num_proc=args.num_proc, check=args.check,
                                  on_bad_row=args.on_bad_row, return_skipped=True)
    if skipped:
        rows = ", ".join(str(r) for r, _ in skipped[:10]) + (", ..." if len(skipped) > 10 else "")
        print(f"align: skipped {len(skipped)} of {len(out) + len(skipped)} rows that fail the checks (rows {rows}; "
              f"first: {skipped[0][1]})", file=sys.stderr)
    _save(out, args.out)
    stats = alignment_stats(out)
    names = (["base"] if args.base_teacher else []) + args.teacher
    rates = ", ".join(f"{n}: {r:.1%}" for n, r in zip(names, stats.rates))
    print(f"align: {len(out)} sequences, {stats.positions} base positions; with a teacher distribution: {rates}")


def _load_vocab_map(path, base_tok, blend_tok):
    from .tokenization.vocab_map import VocabMap

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary map not found: {path}")
    loader = VocabMap.load_json if path.suffix == ".json" else VocabMap.load_npz
    return loader(path, base_tok, blend_tok)


def cmd_pack(args):
    from .pipeline.io import load_rows
    from .pipeline.pack import pack_sequences

    _check_out(args.out, args.data)
    data = load_rows(args.data)
    out = pack_sequences(data, args.block_size, drop_last=not args.keep_tail, metric_level=args.metric_level,
                         logits_dtype=args.logits_dtype, num_proc=args.num_proc)
    if len(out) == 0:
        raise UserError(f"no block of {args.block_size} tokens could be formed; lower --block-size or use --keep-tail")
    _save(out, args.out)
    print(f"pack: {len(data)} sequences -> {len(out)} blocks of {args.block_size} tokens in {args.out}")


def cmd_prepare(args):
    from .pipeline.api import build_fusion_dataset
    from .pipeline.chat import read_chat_template
    from .pipeline.io import load_rows, load_tokenizer
    from .storage import check_output_dir

    tokenizers = args.teacher_tokenizer or list(args.teacher)
    if len(tokenizers) != len(args.teacher):
        raise UserError(f"{len(args.teacher)} --teacher but {len(tokenizers)} --teacher-tokenizer")
    if args.chat_template is not None and len(args.chat_template) != len(args.teacher):
        raise UserError(f"{len(args.teacher)} --teacher but {len(args.chat_template)} --chat-template "
                        "(one per teacher; '-' for the tokenizer's own)")
    templates = [read_chat_template(t, arg="--chat-template") for t in args.chat_template or []] or None
    student_template = read_chat_template(args.student_chat_template, arg="--student-chat-template")
    check_output_dir(args.out, inputs=[args.data, *args.teacher], arg="--out")
    data = load_rows(args.data)
    chat = args.messages_column in data.column_names
    if not chat and args.text_column not in data.column_names:
        raise UserError(f"--data has neither a {args.text_column!r} (--text-column) nor a {args.messages_column!r} "
                        f"(--messages-column) column; columns: {data.column_names}")
    if not chat and (templates or args.student_chat_template):
        raise UserError(f"chat templates given but --data has no {args.messages_column!r} column (--messages-column)")
    teachers = [(model, load_tokenizer(tok)) for model, tok in zip(args.teacher, tokenizers)]
    packed, report = build_fusion_dataset(
        data, load_tokenizer(args.student_tokenizer), teachers, block_size=args.block_size, k=args.k,
        base_model=args.base_model, method=args.method, fallback=args.fallback, text_column=args.text_column,
        batch_size=args.batch_size, logits_dtype=args.logits_dtype,
        cache=False if args.no_cache else (args.cache_dir or True),
        num_proc=args.num_proc, return_report=True, messages_column=args.messages_column,
        chat_templates=templates, student_chat_template=student_template)
    _save(packed, args.out)
    coverage = ", ".join(f"{t['name']} {t['coverage']:.1%} ({t['cache']})" for t in report.teachers)
    kind = (f"chat run, {report.texts} conversations -> {report.blocks} blocks of {args.block_size} tokens "
            f"({report.label_tokens} assistant label tokens kept)" if report.chat else
            f"{report.texts} texts -> {report.blocks} blocks of {args.block_size} tokens")
    print(f"prepare: {kind} in {args.out}; alignment coverage: {coverage}")


def cmd_train(args):
    from .integration.train_command import main as train_main

    train_main(args.train_args)


def cmd_merge(args):
    from .pipeline.merge import merge_models
    from .pipeline.merge_registry import get_merge_method
    from .pipeline.mergekit_merge import parse_cli_setting, parse_setting

    if get_merge_method(args.method).whole_model:  # mergekit's methods
        _check_one_architecture([*args.targets, *([args.base] if args.base else [])])
    per_target = {name: None if values is None else [parse_setting(v) for v in values]
                  for name, values in (("weights", args.weights), ("density", args.density))}
    report = merge_models(args.targets, args.out, method=args.method, base=args.base, temperature=args.temperature,
                          zero_variation=args.zero_variation, max_shard_size=_parse_size(args.max_shard_size),
                          t=None if args.t is None else parse_cli_setting(args.t), seed=args.seed,
                          normalize=False if args.no_normalize else None, dtype=args.merge_dtype, **per_target)
    print(f"merge ({report.method}): {len(report.weights)} tensors, {report.num_parameters} parameters -> "
          f"{', '.join(report.files)}")


def cmd_fusechat(args):
    from .pipeline.fusechat import PairwiseConfig, run_pairwise

    config = PairwiseConfig(
        pivot=args.pivot, sources=args.sources, data=args.data, out=args.out, pivot_tokenizer=args.pivot_tokenizer,
        source_tokenizers=args.source_tokenizers, text_column=args.text_column, max_length=args.max_length, k=args.k,
        align_method=args.method, fusion=args.fusion, loss_type=args.loss_type, lam=args.lam,
        lam_schedule=args.lam_schedule, temperature=args.temperature, precision=args.precision, steps=args.steps,
        batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr, warmup_steps=args.warmup_steps,
        seed=args.seed, extract_batch_size=args.extract_batch_size, merge_method=args.merge,
        merge_weights=args.merge_weights, merge_temperature=args.merge_temperature, density=args.density,
        t=_merge_t(args.t), cpu=args.cpu)
    run_pairwise(config)


def cmd_demo(args):
    from .pipeline.demo import DemoConfig, run_demo

    if args.out:
        _check_out(args.out)
    config = DemoConfig(steps=args.steps, seed=args.seed, out=args.out, train_docs=args.train_docs,
                        eval_docs=args.eval_docs, block_size=args.block_size, batch_size=args.batch_size,
                        lr=args.lr, lam=args.lam, loss_type=args.loss_type, method=args.method,
                        fallback=args.fallback, fusion=args.fusion, cache=args.cache, plots=args.plots)
    results = run_demo(config)
    if args.json:
        print(json.dumps(results, indent=2))


def cmd_reproduce(args):
    from .pipeline.reproduce import ReproduceConfig, run_reproduce

    fields = ReproduceConfig.__dataclass_fields__
    config = ReproduceConfig(**{name: getattr(args, name) for name in fields if hasattr(args, name)})
    run_reproduce(config, command="fusekernels " + " ".join(sys.argv[1:]))


def _check_one_architecture(folders):
    """mergekit merges models of one architecture only (its --allow-crimes is not exposed): refuse
    a mix before any work, naming the architectures."""
    found = {}
    for folder in folders:
        config = Path(folder) / "config.json"
        try:
            arch = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
        except (OSError, ValueError, AttributeError):
            continue  # merge_models reports missing or unreadable model folders itself
        found[str(folder)] = "/".join(arch) or "unknown"
    if len(set(found.values())) > 1:
        listed = ", ".join(f"{folder} ({arch})" for folder, arch in found.items())
        raise UserError(f"the models to merge have different architectures: {listed}; the whole-model (mergekit) "
                        "methods merge models of one architecture only")


# ---------------------------------------------------------------------- parser
def _merge_t(tokens):
    """``--t`` of `fusechat`: a number, a gradient or per-parameter filters (see `merge --t`)."""
    from .pipeline.mergekit_merge import parse_cli_setting

    return parse_cli_setting(tokens)


def _parse_size(text: str) -> int:
    units = {"": 1, "B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}
    value = str(text).strip().upper()
    number = value.rstrip("KMGB")
    unit = value[len(number):]
    try:
        size = int(float(number) * units[unit])
    except (KeyError, ValueError):
        raise UserError(f"--max-shard-size must look like 500MB or 2GB, got {text!r}") from None
    if size <= 0:
        raise UserError(f"--max-shard-size must be positive, got {text!r}")
    return size


def _torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _existing(*paths):
    """The given paths that exist (tokenizer arguments may be packaged names, not paths)."""
    return [p for p in paths if p is not None and Path(p).exists()]


def _check_out(out, *inputs, resume_marker=None):
    """Refuse a non-empty, overlapping or unwritable --out before any work (see storage)."""
    from .storage import check_output_dir

    check_output_dir(out, inputs=_existing(*inputs), resume_marker=resume_marker)


def _save(dataset, out):
    """Save a dataset so that --out appears only once completely written, with content checksums."""
    from ._interrupt import check_interrupted
    from .storage import atomic_dir, check_output_dir, write_checksums

    check_output_dir(out)  # (checked before the work too; something may have appeared since)
    with atomic_dir(out) as tmp:
        dataset.save_to_disk(str(tmp))
        write_checksums(tmp)  # verified when a later step reads it back (load_rows)
        check_interrupted()  # a Ctrl-C swallowed during the write: no output appears


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows the default of every option that has a meaningful one, with or without help text."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.required or action.default is None or action.default is False
                or action.default == argparse.SUPPRESS
                or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
                or "%(default)" in text):
            return text
        return f"{text} (default: %(default)s)".strip()


def _training_fusions() -> list[str]:
    """Fusion rules a training run can use (rules reading explicit weights need them per row)."""
    from .loss.registry import FUSION_RULES

    return [name for name, rule in FUSION_RULES.items() if "teacher_weights" not in rule.needs]


def _loss_types() -> list[str]:
    from .loss.registry import LOSS_TYPES

    return list(LOSS_TYPES.names())


def _precisions() -> list[str]:
    from .loss.registry import PRECISIONS

    return list(PRECISIONS.names())


def _version() -> str:
    from . import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fusekernels", description="FuseLLM / FuseChat data pipeline, fusion "
                                     "training, model merging and an end-to-end demo.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, func, help_text):
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=_HelpFormatter)
        p.set_defaults(func=func)
        return p

    p = command("split", cmd_split, "Split documents too long for any tokenizer into windows that fit every one.")
    p.add_argument("--data", required=True, help="texts: .jsonl/.json/.parquet/.csv/.txt file or saved dataset")
    p.add_argument("--tokenizer", required=True, nargs="+",
                   help="every model's tokenizer (folder, .gguf, .model or packaged name)")
    p.add_argument("--block-size", required=True, type=_positive_int,
                   help="model context length; texts longer than block size - margin tokens are cut")
    p.add_argument("--margin", type=int, default=48, help="tokens kept free below the block size")
    _common(p, out_help="output dataset folder")

    p = command("extract", cmd_extract, "Top-k logits and per-sequence CE metric of one model, resumable.")
    p.add_argument("--model", required=True, help="model folder or .gguf file")
    p.add_argument("--tokenizer", help="tokenizer (default: the model's)")
    p.add_argument("--data", required=True, help="texts (file or saved dataset)")
    p.add_argument("--k", type=_positive_int, default=10, help="top-k logits stored per position")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="sequences per forward pass")
    p.add_argument("--max-length", type=_positive_int, help="truncation length (default: the tokenizer's)")
    p.add_argument("--shard-size", type=_positive_int, default=1024, help="sequences per output shard")
    p.add_argument("--per-token-ce", action="store_true", help="also store the per-token CE metric")
    p.add_argument("--logits-dtype", choices=["float16", "float32"], default="float16",
                   help="storage dtype of the top-k logits")
    p.add_argument("--device", help="e.g. cuda, cpu (default: CUDA when available, else CPU)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="model weights (default: as saved)")
    p.add_argument("--precision", choices=_precisions(), default="fp32",
                   help="top-k and CE of the fp32 logits, or of fp16 logits with fp16 CE as published")
    _common(p, out_help="output folder (shards; rerun to resume)", num_proc=False)

    p = command("vocab-map", cmd_vocab_map, "Blending -> base vocabulary map (nearest base token by edit distance).")
    p.add_argument("--base-tokenizer", required=True, help="base (target) tokenizer")
    p.add_argument("--blend-tokenizer", required=True, help="blending (teacher) tokenizer")
    p.add_argument("--mode", choices=["default", "co_occurrence"], default="default",
                   help="MinED map, or MinED with the co-occurrence refinement of ties")
    p.add_argument("--corpus", help="texts for --mode co_occurrence")
    _common(p, out_help=".json (published format) or .npz file", num_proc=False)

    p = command("prepare", cmd_prepare, "Texts -> split -> extract every teacher (disk cache) -> align to the "
                "student -> pack, in one command (build_fusion_dataset).")
    p.add_argument("--data", required=True, help="texts (.jsonl/.json/.parquet/.csv/.txt or a saved dataset)")
    p.add_argument("--student-tokenizer", required=True, help="the target model's tokenizer (path or asset name)")
    p.add_argument("--teacher", action="append", required=True, help="teacher model: folder or .gguf (repeatable)")
    p.add_argument("--teacher-tokenizer", action="append", default=[],
                   help="its tokenizer (repeatable, same order; default: the teacher path)")
    p.add_argument("--base-model", help="the student model itself, to fuse its own distribution too (FuseLLM)")
    p.add_argument("--block-size", type=_positive_int, default=2048, help="training block length")
    p.add_argument("--k", type=_positive_int, default=10, help="top-k entries kept per position")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="texts per teacher forward pass")
    p.add_argument("--method", choices=["byte_span", "compat_hard", "compat_soft"], default="byte_span",
                   help="token alignment")
    p.add_argument("--fallback", choices=["published", "absent"], default="absent",
                   help="positions a teacher cannot serve")
    p.add_argument("--logits-dtype", choices=["float16", "float32"], default="float16",
                   help="storage dtype of the teacher logits (float32 for teachers beyond the float16 range)")
    p.add_argument("--cache-dir", help="teacher-output cache folder (default: the user cache folder)")
    p.add_argument("--no-cache", action="store_true", help="do not use the teacher-output cache")
    p.add_argument("--messages-column", default="messages",
                   help="chat data: column of conversations (role/content lists); when --data has it, each model "
                        "renders them with its chat template, only assistant tokens get labels, and each "
                        "conversation is truncated to --block-size tokens")
    p.add_argument("--chat-template", nargs="+", metavar="FILE",
                   help="chat data: a Jinja template file per teacher (same order; '-' or 'none' for its "
                        "tokenizer's own)")
    p.add_argument("--student-chat-template", metavar="FILE",
                   help="chat data: a Jinja template file for the student (default: its tokenizer's own)")
    _common(p, out_help="output folder for the packed dataset")

    p = command("align", cmd_align, "Align teachers' top-k to the base tokenization and stack them.")
    p.add_argument("--base", required=True, help="base extraction folder (or texts with --no-base-teacher)")
    p.add_argument("--base-tokenizer", required=True, help="base (target) tokenizer")
    p.add_argument("--teacher", action="append", default=[], help="blending extraction folder (repeatable)")
    p.add_argument("--teacher-tokenizer", action="append", default=[], help="its tokenizer (repeatable, same order)")
    p.add_argument("--method", choices=["byte_span", "compat_hard", "compat_soft"], default="byte_span",
                   help="byte-span alignment, or the published DTW alignment (hard / soft vocabulary match)")
    p.add_argument("--fallback", choices=["published", "absent"], default="published",
                   help="published: unaligned positions get the one-hot on the current token and empty "
                        "aligned lists the base model's distribution (needs the base teacher with "
                        "compat_hard); absent: the teacher is left out there")
    p.add_argument("--vocab-map", action="append", help="soft-mode map per teacher (.json or .npz)")
    p.add_argument("--no-base-teacher", dest="base_teacher", action="store_false",
                   help="the base model's own top-k is not a teacher")
    p.add_argument("--max-length", type=_positive_int, help="tokenize raw base texts to this length")
    p.add_argument("--check", choices=["length", "bytes", "prefix", "none"], default="prefix",
                   help="how a base row and a teacher row are verified to cover the same text: equal byte "
                        "lengths, equal bytes, one a byte prefix of the other (extraction truncates), or not at all")
    p.add_argument("--on-bad-row", choices=["error", "skip"], default="error",
                   help="a row failing the checks stops the run (error) or is dropped and counted (skip)")
    _common(p, out_help="output dataset folder")

    p = command("pack", cmd_pack, "Pack aligned sequences into fixed-length training blocks.")
    p.add_argument("--data", required=True, help="align output folder")
    p.add_argument("--block-size", required=True, type=_positive_int, help="tokens per training block")
    p.add_argument("--keep-tail", action="store_true", help="keep the last, shorter block of each map batch")
    p.add_argument("--metric-level", choices=["sequence", "token"], default="sequence",
                   help="CE metric per block (sequence) or per token")
    p.add_argument("--logits-dtype", choices=["float16", "float32"], default="float16",
                   help="storage dtype of the top-k logits")
    _common(p, out_help="output dataset folder")

    # every option is parsed by fusekernels.integration.train_command (HfArgumentParser: all of
    # TrainingArguments and FusionArguments, or a YAML / JSON config file); see `train --help`
    p = sub.add_parser("train", add_help=False, help="Train the base model with the fusion loss (FusionTrainer): "
                       "every TrainingArguments option, or a YAML / JSON config file.")
    p.set_defaults(func=cmd_train)

    from .pipeline.merge import ZERO_VARIATION_RULES, merge_method_names, merge_methods

    p = command("merge", cmd_merge, "Merge target models in parameter space (FuseChat VaRM, linear; TIES, DARE, "
                                    "SLERP, task arithmetic via mergekit).")
    p.add_argument("--targets", required=True, nargs="+",
                   help="safetensors checkpoints (folders or files; model folders for the mergekit methods)")
    p.add_argument("--base", help="common starting (pivot) model: varm, ties, dare_*, task_arithmetic")
    p.add_argument("--method", choices=merge_method_names(), default="varm",
                   help="; ".join(f"{m.name}: {m.summary}" for m in merge_methods()))
    p.add_argument("--weights", nargs="+", metavar="W", help="per-target weights, one for all or one per target "
                   "(linear: numbers; ties / dare_* / task_arithmetic: each also a gradient 0,0.5,1 or filters "
                   "'self_attn=0.3;mlp=0.7;0.5'; default 1 each)")
    p.add_argument("--temperature", type=float, help="VaRM softmax temperature (default: plain normalisation)")
    p.add_argument("--zero-variation", choices=ZERO_VARIATION_RULES, help="VaRM, when a target left a tensor "
                   "unchanged: uniform weights for it (default, the published FuseChat merge) or the plain "
                   "variation ratio (that target gets weight 0)")
    p.add_argument("--density", nargs="+", metavar="D", help="ties / dare_*: fraction of each task vector kept "
                   "(one value or one per target, numbers, gradients or filters as --weights; default 0.5 as FuseChat)")
    p.add_argument("--t", nargs="+", metavar="T", help="slerp: 0 = first target, 1 = second; a number, a gradient "
                   "over the layers (0,0.5,1), or per-parameter filters with a fallback, e.g. FuseChat's published "
                   "--t self_attn=0,0.5,0.3,0.7,1 mlp=1,0.5,0.7,0.3,0 0.5 (default 0.5)")
    p.add_argument("--no-normalize", action="store_true", help="ties / dare_* / task_arithmetic: do not "
                   "normalise the weights (FuseChat normalises)")
    p.add_argument("--merge-dtype", choices=["float32", "bfloat16", "float16"],
                   help="mergekit methods: output dtype (default: mergekit's)")
    p.add_argument("--seed", type=int, help="dare_*: seed of the random drops (default 0)")
    p.add_argument("--max-shard-size", default="2GB")
    _common(p, out_help="output folder or .safetensors file", num_proc=False, text_column=False)

    p = command("fusechat", cmd_fusechat, "FuseChat's pairwise recipe in one resumable run: pivot + each source "
                                          "-> N target models -> merged model, with a summary table.")
    p.add_argument("--pivot", required=True, help="pivot model (folder or .gguf): the start of every target")
    p.add_argument("--sources", required=True, nargs="+", help="source models (folders or .gguf)")
    p.add_argument("--data", required=True, help="texts (file or saved dataset)")
    p.add_argument("--pivot-tokenizer", help="pivot tokenizer (default: the pivot's)")
    p.add_argument("--source-tokenizers", nargs="+", help="source tokenizers (default: each source's)")
    p.add_argument("--max-length", type=_positive_int, default=2048, help="block size of split, extract and pack")
    p.add_argument("--k", type=_positive_int, default=10, help="top-k stored per position")
    p.add_argument("--method", choices=["byte_span", "compat_hard", "compat_soft"], default="byte_span",
                   help="token alignment")
    p.add_argument("--fusion", choices=_training_fusions(), default="mince", help="fusion of pivot and source")
    p.add_argument("--loss-type", choices=_loss_types(), default="ce", help="fusion term (FuseChat: ce)")
    p.add_argument("--lam", type=float, default=0.9, help="weight of the CLM term (FuseChat: 0.9)")
    p.add_argument("--lam-schedule", choices=["hard", "hard_and_decay", "soft"], default="hard")
    p.add_argument("--temperature", type=float, default=1.0, help="teacher temperature")
    p.add_argument("--precision", choices=_precisions(), default="fp32",
                   help="extraction and loss in fp32, or rounded as the published code")
    p.add_argument("--steps", type=_positive_int, default=1000, help="optimizer steps per pair")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="blocks per micro-batch")
    p.add_argument("--grad-accum", type=_positive_int, default=1, help="gradient accumulation steps")
    p.add_argument("--lr", type=float, default=1e-5, help="peak learning rate")
    p.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up steps")
    p.add_argument("--seed", type=int, default=42, help="training seed (and DARE's)")
    p.add_argument("--extract-batch-size", type=_positive_int, default=8, help="sequences per teacher forward")
    p.add_argument("--merge", choices=merge_method_names(), default="varm", help="merge of the target models")
    p.add_argument("--merge-weights", type=float, nargs="+", help="per-target merge weights")
    p.add_argument("--merge-temperature", type=float, help="VaRM softmax temperature")
    p.add_argument("--density", type=float, nargs="+", help="ties / dare_*: density (default 0.5)")
    p.add_argument("--t", nargs="+", metavar="T", default=["0.5"],
                   help="slerp interpolation: a number, a gradient or filters, as `merge --t`")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    _common(p, out_help="output folder (rerun with the same options to resume)", num_proc=False)

    from .pipeline.reproduce import ReproduceConfig

    r = ReproduceConfig()
    p = command("reproduce", cmd_reproduce, "The FuseLLM / FuseChat tables in miniature (opt-in, long): CLM-only, "
                "single-teacher distillation, FuseLLM MinCE / AvgCE, FuseChat VaRM / linear merges, and the "
                "first teacher continually trained as the target; held-out perplexity mean +- std over seeds.")
    p.add_argument("--out", required=True, help="results folder (JSON, RESULTS.md, PNG plots, models)")
    p.add_argument("--seeds", type=_positive_int, default=r.seeds, help="seeds 0..N-1 (init and data order)")
    for name in ("docs_per_domain", "verses_per_doc", "doc_chars", "eval_blocks", "block_size", "k", "steps",
                 "batch_size", "warmup_steps", "hidden_size", "num_layers", "num_heads", "target_steps",
                 "target_batch_size", "teacher_batch_size", "log_every"):
        p.add_argument("--" + name.replace("_", "-"), type=_positive_int, default=getattr(r, name),
                       help=name.replace("_", " "))
    for name in ("lr", "lam", "alm_temperature", "target_lr", "target_lam"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(r, name), help=name.replace("_", " "))
    p.add_argument("--no-target", dest="target", action="store_false", help="skip the continually trained target table")
    p.add_argument("--no-cache", dest="cache", action="store_false", help="do not use the teacher-output cache")

    from .pipeline.demo import DemoConfig

    d = DemoConfig()
    p = command("demo", cmd_demo, "End-to-end FuseLLM demo: SmolLM2-135M and Gemma-3-270M fused into a tiny Llama "
                "(Mistral tokenizer) on KJV text, next to CLM-only training; JSON results and PNG plots.")
    p.add_argument("--steps", type=_positive_int, default=d.steps, help="optimizer steps of each training run")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the student initialisation and data order")
    p.add_argument("--out", help="folder for results and models; None = a new temporary folder")
    p.add_argument("--train-docs", type=_positive_int, default=d.train_docs,
                   help=f"training documents of {d.verses_per_doc} KJV verses")
    p.add_argument("--eval-docs", type=_positive_int, default=d.eval_docs, help="held-out documents")
    p.add_argument("--block-size", type=_positive_int, default=d.block_size, help="student context length")
    p.add_argument("--batch-size", type=_positive_int, default=d.batch_size, help="training blocks per step")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (cosine schedule)")
    p.add_argument("--lam", type=float, default=d.lam, help="weight of the CLM term in the fusion run")
    p.add_argument("--loss-type", choices=_loss_types(), default=d.loss_type, help="fusion term")
    p.add_argument("--method", choices=["byte_span", "compat_hard", "compat_soft"], default=d.method,
                   help="token alignment")
    p.add_argument("--fallback", choices=["published", "absent"], default=d.fallback,
                   help="unaligned positions: one-hot on the current token (published) or no teacher")
    p.add_argument("--fusion", choices=_training_fusions(), default=d.fusion, help="how the teachers are fused")
    p.add_argument("--no-cache", dest="cache", action="store_false", help="do not use the teacher-output cache")
    p.add_argument("--no-plots", dest="plots", action="store_false", help="write no PNG plots")
    p.add_argument("--json", action="store_true", help="print the results as JSON at the end")
    return parser


def _common(p, *, out_help, num_proc=True, text_column=True):
    p.add_argument("--out", required=True, help=out_help)
    if text_column:
        p.add_argument("--text-column", default="text", help="column holding the text")
    if num_proc:
        p.add_argument("--num-proc", type=_positive_int, help="worker processes for datasets.map")


def main(argv=None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "train":
        args.train_args = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from . import _interrupt

    _interrupt.install()  # a Ctrl-C swallowed by a finaliser still stops the command
    try:
        with extra_hint():
            args.func(args)
        _interrupt.check_interrupted()
    except _user_errors() as err:
        if args.debug:
            raise
        print(f"fusekernels {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"fusekernels {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        _interrupt.uninstall()
    return 0


if __name__ == "__main__":
    sys.exit(main())
