"""Optional dependencies: which extra installs which module, and imports that say so.

A missing optional module raises :class:`MissingExtraError` (a ``ModuleNotFoundError``) whose
message names the extra to install, e.g. ``pip install 'fusekernels[hf]'``. A module missing
*inside* an installed dependency (not one of ours) propagates unchanged.
"""
from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

#: Top-level module -> the ``fusekernels`` extra that installs it.
EXTRA_OF_MODULE: dict[str, str] = {
    "transformers": "hf",
    "datasets": "hf",
    "accelerate": "hf",
    "safetensors": "hf",
    "huggingface_hub": "hf",
    "yaml": "hf",  # YAML config files of the commands (pyyaml)
    "filelock": "hf",
    "xxhash": "hf",
    "triton": "triton",
    "gguf": "assets",
    "sentencepiece": "assets",
    "tiktoken": "assets",
    "mistral_common": "assets",
    "matplotlib": "plot",
    "mergekit": "merge",
    "trl": "trl",
    "mkdocs": "docs",
    "mkdocstrings": "docs",
}


class MissingExtraError(ModuleNotFoundError):
    """An optional dependency is not installed; the message says which extra installs it."""


def missing_extra(module: str, feature: str | None = None) -> MissingExtraError | None:
    """The error to raise for a missing ``module``, or None if no extra of ours provides it."""
    top = module.split(".")[0]
    extra = EXTRA_OF_MODULE.get(top)
    if extra is None:
        return None
    needed_by = f" (needed by {feature})" if feature else ""
    return MissingExtraError(
        f"missing optional dependency {top!r}{needed_by}: pip install 'fusekernels[{extra}]'", name=top)


def require(module: str, feature: str | None = None) -> ModuleType:
    """``importlib.import_module(module)``, naming the extra to install when it is missing.

    Args:
        module: dotted module name, e.g. ``"datasets"`` or ``"transformers.trainer_utils"``.
        feature: what needs it, for the message (e.g. ``"fusekernels.pipeline.load_rows"``).
    """
    with extra_hint(feature):
        return importlib.import_module(module)


@contextmanager
def extra_hint(feature: str | None = None) -> Iterator[None]:
    """Re-raise a ``ModuleNotFoundError`` of an optional dependency as :class:`MissingExtraError`."""
    try:
        yield
    except MissingExtraError:
        raise
    except ModuleNotFoundError as err:
        hint = missing_extra(err.name or "", feature)
        if hint is None:
            raise
        raise hint from err
