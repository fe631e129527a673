"""Autograd wrapper: the backend computes d(loss)/d(logits) during the forward.

The fused target q is a constant (teacher outputs are data, not parameters), so no gradient flows
to teacher_logits, teacher weights or the scales; only the student logits get one. Precomputing
the gradient in the forward saves a second softmax pass and the memory of saving logits.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .backend import fusion_loss_rows, fusion_loss_rows_with_terms


@dataclass(frozen=True)
class RowOptions:
    temperature: float
    loss_type: str
    ignore_index: int
    grad_inplace: bool
    backend: str
    reduce: bool          # True: sum rows to a scalar ("mean" / "sum"); False: per-row losses
    components: bool      # also return the unit-scaled CLM / fusion components
    compute_grad: bool
    probs_given: bool = False  # teacher_logits hold target probabilities (precision="published")


class FusionLossFunction(torch.autograd.Function):
    """Backward returns the precomputed gradient times grad_output (out of place, so the graph
    can be backpropagated several times, e.g. by gradcheck), except with grad_inplace where the
    buffer is scaled in place and a second backward through the same graph raises.

    apply(logits [N, V], labels [N], teacher_ids [N, T, k], teacher_logits [N, T, k],
    teacher_weights [N, T], clm_scale [N], fusion_scale [N], clm_unit [N], fusion_unit [N], options)
    -> (loss: 0-d or [N], clm component, fusion component); components are empty tensors unless
    options.components, and never differentiable."""

    @staticmethod
    def forward(ctx, logits, labels, teacher_ids, teacher_logits, teacher_weights, clm_scale,
                fusion_scale, clm_unit, fusion_unit, options: RowOptions):
        kwargs = dict(temperature=options.temperature, loss_type=options.loss_type,
                      ignore_index=options.ignore_index, compute_grad=options.compute_grad,
                      grad_inplace=options.grad_inplace, backend=options.backend,
                      probs_given=options.probs_given)
        head = (logits, labels, teacher_ids, teacher_logits, teacher_weights, clm_scale, fusion_scale)
        if options.components:
            row_loss, grad, clm_rows, fus_rows = fusion_loss_rows_with_terms(*head, clm_unit, fusion_unit, **kwargs)
        else:
            row_loss, grad = fusion_loss_rows(*head, **kwargs)
            clm_rows = fus_rows = row_loss.new_empty(0)
        ctx.grad = grad
        ctx.reduce = options.reduce
        ctx.grad_inplace = options.grad_inplace
        if options.reduce:
            row_loss, clm_rows, fus_rows = row_loss.sum(), clm_rows.sum(), fus_rows.sum()
        ctx.mark_non_differentiable(clm_rows, fus_rows)
        return row_loss, clm_rows, fus_rows

    @staticmethod
    def backward(ctx, grad_loss, _grad_clm, _grad_fusion):
        grad = ctx.grad
        if grad is None:
            raise RuntimeError("fusion_loss: the gradient buffer was already scaled in place by an earlier "
                               "backward (inplace_backward=True allows one backward per forward); "
                               "recompute the loss to backpropagate again")
        scale = grad_loss.to(grad.dtype) if ctx.reduce else grad_loss.to(grad.dtype)[:, None]
        if ctx.reduce and torch.equal(grad_loss, torch.ones_like(grad_loss)):
            return (grad,) + (None,) * 9
        if ctx.grad_inplace:
            # The caller traded re-entrancy for memory: scale the precomputed buffer in place.
            ctx.grad = None
            return (grad.mul_(scale),) + (None,) * 9
        return (grad * scale,) + (None,) * 9
