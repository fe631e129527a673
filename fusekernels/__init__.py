"""fusekernels: fast, exact building blocks for knowledge fusion of LLMs (FuseLLM / FuseChat).

Submodules are imported lazily so that, e.g., the loss can be used without building the native
alignment core and the alignment without importing torch:

- ``fusekernels.align``: native edit-distance alignment (Levenshtein, MinED, DTW, top-k transfer)
- ``fusekernels.tokenization``: tokenizer profiles and tokenizer-aware alignment
- ``fusekernels.loss``: the fused sparse top-k fusion loss (Triton on CUDA, torch elsewhere)
- ``fusekernels.kernels``: the Triton kernels themselves
- ``fusekernels.integration``: Hugging Face Trainer integration and data collator
- ``fusekernels.pipeline``: data pipeline steps and model merging
- ``fusekernels.recipes``: end-to-end recipes (FuseChat pairwise, demo, reproduce)
"""
import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fusekernels")
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"

_SUBMODULES = ("align", "tokenization", "loss", "kernels", "integration", "pipeline", "recipes")


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
