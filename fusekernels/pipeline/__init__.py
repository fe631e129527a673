"""FuseLLM / FuseChat data pipeline over ``datasets`` and parameter-space merging.

Steps (each takes and returns a ``datasets.Dataset``; the CLI chains them through folders):

1. :func:`split_long_texts` - split documents too long for any tokenizer;
2. :func:`extract_teacher_topk` - each model's top-k logits and CE metric, resumable and
   sharded across processes; :func:`tokenize_texts` for a base model that is
   not a teacher;
3. :func:`align_teachers` - every teacher's top-k on the base tokenization, stacked into the
   columns :class:`fusekernels.integration.FusionDataCollator` takes;
4. :func:`pack_sequences` - fixed-length training blocks with per-block metrics.

:func:`build_fusion_dataset` chains steps 1-4 for a student tokenizer and several teachers in one
call, with teacher outputs kept in a disk cache (:func:`cached_extract`).

:func:`merge_models` merges trained target models with a method of one registry
(:func:`register_merge_method`): FuseChat VaRM and linear tensor by tensor from safetensors
files, mergekit's TIES / DARE / task arithmetic / SLERP.
"""
import importlib

_EXPORTS = {
    "split_long_texts": "split", "split_text": "split",
    "extract_teacher_topk": "extract", "load_extracted": "extract", "tokenize_texts": "extract",
    "align_teachers": "align_step", "alignment_stats": "align_step", "AlignmentStats": "align_step",
    "pack_sequences": "pack", "pack_arrays": "pack",
    "merge_models": "merge", "variation_weights": "merge", "MergeReport": "merge",
    "SafetensorsCheckpoint": "merge", "register_merge_method": "merge", "merge_method_names": "merge",
    "build_fusion_dataset": "api", "FusionDataReport": "api",
    "cached_extract": "cache", "extraction_key": "cache", "CacheInfo": "cache",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    # Lazy: importing the package must not pull in torch / datasets / transformers.
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
