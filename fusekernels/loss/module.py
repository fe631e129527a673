"""``FusionLoss``: the fusion loss as an ``nn.Module`` (options fixed at construction)."""
from __future__ import annotations

import torch
from torch import nn

from .functional import fusion_loss


class FusionLoss(nn.Module):
    """Module form of :func:`fusekernels.loss.fusion_loss`.

    The options (fusion, loss_type, temperature, lam, ignore_index, reduction, inplace_backward,
    backend, return_components) are given to ``__init__``; ``forward`` takes the tensors:
    ``forward(logits, labels, teacher_ids, teacher_logits, *, teacher_counts=None, teacher_ce=None,
    teacher_weights=None, fusion_mask=None, num_items_in_batch=None, num_fusion_items=None)``.
    """

    def __init__(self, fusion: str = "mince", loss_type: str = "kl", temperature: float = 1.0,
                 lam: float = 0.9, ignore_index: int = -100, reduction: str = "mean",
                 inplace_backward: bool = False, backend: str = "auto", return_components: bool = False,
                 precision: str = "fp32", base_teacher: bool = True):
        super().__init__()
        self.options = dict(fusion=fusion, loss_type=loss_type, temperature=temperature, lam=lam,
                            ignore_index=ignore_index, reduction=reduction,
                            inplace_backward=inplace_backward, backend=backend,
                            return_components=return_components, precision=precision,
                            base_teacher=base_teacher)

    def forward(self, logits: torch.Tensor, labels, teacher_ids: torch.Tensor, teacher_logits: torch.Tensor,
                *, teacher_counts=None, teacher_ce=None, teacher_weights=None, fusion_mask=None,
                num_items_in_batch=None, num_fusion_items=None):
        return fusion_loss(logits, labels, teacher_ids, teacher_logits, teacher_counts=teacher_counts,
                           teacher_ce=teacher_ce, teacher_weights=teacher_weights, fusion_mask=fusion_mask,
                           num_items_in_batch=num_items_in_batch, num_fusion_items=num_fusion_items,
                           **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value!r}" for key, value in self.options.items())
