"""Which ``checkpoint-N`` folders of a training run are complete (read by :class:`FusionTrainer`
and by :func:`fusekernels.integration.train_command.resolve_checkpoint`)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def checkpoint_is_complete(folder: str | Path) -> bool:
    """Whether a ``checkpoint-N`` folder was saved completely: the Trainer writes its
    ``trainer_state.json`` after the weights, optimizer, scheduler and RNG states, so a save
    interrupted before the end (Ctrl-C, a killed job) lacks it or holds a partial file."""
    try:
        state = json.loads((Path(folder) / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(state, dict) and "global_step" in state


def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The newest complete ``checkpoint-N`` folder of ``output_dir`` (None if there is none); each
    incomplete one skipped is logged (warning)."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    out = Path(output_dir)
    if not out.is_dir():
        return None
    steps = []
    for child in out.iterdir():
        name = child.name
        if child.is_dir() and name.startswith(PREFIX_CHECKPOINT_DIR + "-") and name.split("-")[-1].isdigit():
            steps.append((int(name.split("-")[-1]), child))
    for _, child in sorted(steps, reverse=True):
        if checkpoint_is_complete(child):
            return str(child)
        logger.warning(f"train: skipping {child}: its save did not finish (no readable trainer_state.json)")
    return None
