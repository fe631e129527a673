"""The allowed values of the recipes' config fields, read from the registries when asked (the loss
registries import torch, so the config modules stay light) and used as the ``choices`` metadata of
their command-line options."""
from __future__ import annotations


def alignment_modes() -> tuple[str, ...]:
    from ..tokenization.registry import ALIGNMENT_MODES

    return ALIGNMENT_MODES.names()


def fallbacks() -> tuple[str, ...]:
    from ..pipeline.align_step import FALLBACKS

    return FALLBACKS


def training_fusions() -> tuple[str, ...]:
    """Fusion rules a training run can use (rules reading explicit weights need them per row)."""
    from ..loss.registry import FUSION_RULES

    return tuple(name for name, rule in FUSION_RULES.items() if "teacher_weights" not in rule.needs)


def loss_types() -> tuple[str, ...]:
    from ..loss.registry import LOSS_TYPES

    return LOSS_TYPES.names()


def precisions() -> tuple[str, ...]:
    from ..loss.registry import PRECISIONS

    return PRECISIONS.names()


def lam_schedules() -> tuple[str, ...]:
    from ..integration.schedules import LAM_SCHEDULES

    return LAM_SCHEDULES


def merge_methods() -> tuple[str, ...]:
    from ..pipeline.merge import merge_method_names

    return tuple(merge_method_names())


def merge_setting(tokens):
    """``--t`` tokens: a number, a gradient over the layers or per-parameter filters."""
    from ..pipeline.mergekit_merge import parse_cli_setting

    return parse_cli_setting(tokens)
