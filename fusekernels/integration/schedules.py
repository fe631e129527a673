"""Schedules for ``lam``, the weight of the causal-LM term in ``lam * CLM + (1 - lam) * fusion``.

FuseLLM publishes three: "hard" (constant), "hard_and_decay" (lam grows linearly from its
initial value to 1 over training, so the fusion term fades out) and "soft" (per-sample lam from
the best teacher reward: ``lam = 1 - max exp(-ce)``, computed per row by the loss itself,
``fusion_loss(lam="soft")``). The first two are pure functions of the optimizer step so that
every micro-batch of one accumulation step, and every process, uses the same value.
"""
from __future__ import annotations

LAM_SCHEDULES = ("hard", "hard_and_decay", "soft")


def check_lam(lam: float, name: str = "lam") -> float:
    """Return ``lam`` as a float after checking that it lies in [0, 1]."""
    lam = float(lam)
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {lam}")
    return lam


def lam_at_step(schedule: str, lam: float, step: int, max_steps: int) -> float:
    """``lam`` to use at optimizer step ``step`` (0-based) of ``max_steps``.

    "hard": ``lam`` at every step. "soft": the string "soft" (the loss sets lam per row).
    "hard_and_decay": ``lam + (1 - lam) * step / max_steps``,
    i.e. ``lam`` at the first step, growing linearly towards 1 (reached after the last step).
    """
    lam = check_lam(lam)
    if schedule == "soft":
        return "soft"  # per row, from the rewards: fusion_loss(lam="soft")
    if schedule == "hard":
        return lam
    if schedule != "hard_and_decay":
        raise ValueError(f"lam_schedule must be one of {LAM_SCHEDULES}, got {schedule!r}")
    if max_steps <= 0:
        raise ValueError(f"max_steps must be positive for the 'hard_and_decay' schedule, got {max_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    progress = min(step, max_steps) / max_steps
    return lam + (1.0 - lam) * progress
