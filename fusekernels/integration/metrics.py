"""Running sums behind the logged loss components (``clm_loss``, ``fusion_loss``, ``lam``,
``aux_loss``) and the held-out ``clm_loss`` / ``perplexity`` of evaluation.

Shared by :class:`~fusekernels.integration.FusionTrainer` and
:class:`~fusekernels.integration.FusionLossFunction` so that both routes log the same names.
Sums stay on the device (no host sync per step) until a log line is written.
"""
from __future__ import annotations

import math

import torch


class ComponentMeter:
    """Accumulates per-step components (training) and token-weighted CLM sums (evaluation)."""

    def __init__(self):
        self.train_sums = None   # fp32 [3]: clm, fusion, aux summed over micro-batch calls
        self.lam = None
        self.started_at = 0      # optimizer step at which the current sums began
        self.reset_eval()

    def reset_eval(self) -> None:
        self.eval_sums = None    # fp64 [2]: sum of CLM token losses, label-token count

    def add_train(self, clm: torch.Tensor, fusion: torch.Tensor, lam: float, aux=None, scale: float = 1.0,
                  step: int = 0) -> None:
        """One micro-batch's components, each already normalised by the accumulated batch (so the
        sum over one optimizer step is that step's value); ``step``: the current optimizer step."""
        if self.train_sums is None:
            self.started_at = step
        aux = torch.zeros((), device=clm.device) if aux is None else aux.detach().float()
        step = torch.stack([clm.detach().float() * scale, fusion.detach().float() * scale, aux])
        self.train_sums = step if self.train_sums is None else self.train_sums + step
        self.lam = lam

    def train_logs(self, global_step: int, reduce=None) -> dict:
        """Mean components per optimizer step since the last call (``reduce(t, "mean")`` averages
        across processes); empty when nothing was recorded."""
        if self.train_sums is None:
            return {}
        sums = reduce(self.train_sums, "mean") if reduce is not None else self.train_sums
        steps = max(global_step - self.started_at, 1)
        logs = {"clm_loss": round(float(sums[0]) / steps, 6), "fusion_loss": round(float(sums[1]) / steps, 6)}
        if not isinstance(self.lam, str):  # "soft": lam differs per row
            logs["lam"] = round(float(self.lam), 6)
        if float(sums[2]) != 0.0:
            logs["aux_loss"] = round(float(sums[2]) / steps, 6)
        self.train_sums = None
        return logs

    def add_eval(self, clm_mean: torch.Tensor, shifted_labels: torch.Tensor) -> None:
        """A batch's CLM loss (mean over its label tokens) and its shifted labels [B, T]."""
        count = (shifted_labels != -100).sum().double()
        step = torch.stack([clm_mean.detach().double() * count, count])
        self.eval_sums = step if self.eval_sums is None else self.eval_sums + step

    def eval_logs(self, prefix: str, reduce=None) -> dict:
        """``{prefix}_clm_loss`` (token-weighted over the whole evaluation set) and
        ``{prefix}_perplexity`` = exp of it; ``reduce(t, "sum")`` sums across processes."""
        if self.eval_sums is None:
            return {}
        sums = reduce(self.eval_sums, "sum") if reduce is not None else self.eval_sums
        self.reset_eval()
        if float(sums[1]) == 0:
            return {}
        clm = float(sums[0]) / float(sums[1])
        return {f"{prefix}_clm_loss": round(clm, 6),
                f"{prefix}_perplexity": round(math.exp(clm), 4) if clm < 700 else float("inf")}
