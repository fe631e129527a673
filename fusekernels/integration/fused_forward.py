"""The fusion loss computed inside the model's own ``forward`` (the fused LM head).

Why inside ``forward``: under FSDP (and any wrapper that gathers parameters around the wrapped
module's call) the LM-head weight is whole only while the model's forward runs. Like
Liger-Kernel, the model instance gets a ``forward`` that accepts one extra keyword,
``fusion_targets``; the trainer calls the model (through every wrapper, so DDP / FSDP hooks fire)
with it, and the loss comes back as ``outputs.loss``. Without ``fusion_targets`` the model
behaves exactly as before.

How the hidden states are obtained: a forward pre-hook on ``lm_head`` takes its input, the final
hidden states ``[B, T, H]``, and hands ``lm_head`` an empty ``[B, 0, H]`` slice instead, so no
``[B, T, V]`` logits tensor is ever made; the chunked loss
(:func:`fusekernels.loss.fused_linear.fused_linear_fusion_loss`) then reads the hidden states and
the weight. This works for every model that calls its ``lm_head`` module on the final hidden
states (Llama-like models, OPT, MoE models, ...). When the capture fails (the hook never fires,
the input has another shape, the weight is sharded at that point), ``lm_head`` ran untouched, the
full logits are in the output, and the loss is computed from them: a one-time warning, never a
crash, and no second forward.
"""
from __future__ import annotations

import functools
import warnings

import torch
from torch import nn

from ..loss.functional import fusion_loss
from ..loss.fused_linear import fused_linear_fusion_loss

_ATTR = "_fusekernels_fused_forward"


def _full_weight(head: nn.Module) -> bool:
    """Whether ``head.weight`` is the whole ``[V, H]`` matrix right now (not an FSDP / DTensor shard)."""
    weight = getattr(head, "weight", None)
    if not isinstance(weight, torch.Tensor) or type(weight).__name__ == "DTensor":
        return False
    return tuple(weight.shape) == (head.out_features, head.in_features) and weight.numel() > 0


class FusedForward:
    """Per-model state of the patched ``forward`` (installed by :func:`install_fused_forward`).

    ``enabled`` is False once a capture failed (then every later call takes the full logits
    directly); ``warned`` keeps the warning to one.
    """

    def __init__(self, model: nn.Module, original):
        self.model = model
        self.original = original
        self.enabled = True
        self.warned = False
        self.last_components = None  # (clm, fusion) 0-d tensors of the last call, when requested
        self.last_fused = False      # whether the last call used the hidden states

    def _fall_back(self, why: str) -> None:
        self.enabled = False
        if not self.warned:
            self.warned = True
            warnings.warn(f"fusekernels: fused LM head disabled for {type(self.model).__name__} ({why}); the "
                          "fusion loss is computed from the full logits instead", RuntimeWarning, stacklevel=3)

    def __call__(self, *args, fusion_targets: dict | None = None, **kwargs):
        if fusion_targets is None:
            return self.original(*args, **kwargs)
        spec = fusion_targets["spec"]
        labels = fusion_targets["labels"]  # [B, T] shifted labels
        head = getattr(self.model, "lm_head", None)
        use_fused = spec["fused"] and self.enabled and isinstance(head, nn.Linear)
        if use_fused and not _full_weight(head):
            self._fall_back("the lm_head weight is sharded inside the model's forward")
            use_fused = False
        captured: dict = {}
        handle = None
        if use_fused:
            def take_hidden(_module, inputs):
                if "hidden" in captured:  # a second lm_head call: leave it alone
                    return None
                hidden = inputs[0] if inputs else None
                ok = (isinstance(hidden, torch.Tensor) and hidden.dim() == labels.dim() + 1
                      and hidden.shape[:-1] == labels.shape and hidden.shape[-1] == head.in_features)
                captured["hidden"] = hidden if ok else None
                return (hidden[..., :0, :],) + tuple(inputs[1:]) if ok else None

            handle = head.register_forward_pre_hook(take_hidden)
        try:
            outputs = self.original(*args, **kwargs)
        finally:
            if handle is not None:
                handle.remove()
        hidden = captured.get("hidden")
        common = dict(teacher_ce=fusion_targets.get("teacher_ce"), fusion=spec["fusion"], loss_type=spec["loss_type"],
                      temperature=spec["temperature"], lam=spec["lam"], fusion_mask=fusion_targets.get("fusion_mask"),
                      reduction="mean", num_items_in_batch=fusion_targets.get("num_items_in_batch"),
                      num_fusion_items=fusion_targets.get("num_fusion_items"), backend=spec["backend"],
                      return_components=spec["components"], precision=spec.get("precision", "fp32"),
                      base_teacher=spec.get("base_teacher", True),
                      teacher_chunk_span=fusion_targets.get("teacher_chunk_span"),
                      teacher_chunk_logprob=fusion_targets.get("teacher_chunk_logprob"),
                      alm_temperature=spec.get("alm_temperature", 1.0))
        if hidden is not None:
            result = fused_linear_fusion_loss(hidden.to(head.weight.dtype), head.weight, labels,
                                              fusion_targets["teacher_ids"], fusion_targets["teacher_logits"],
                                              bias=head.bias, chunk_rows=spec["chunk_rows"], **common)
        else:
            if use_fused:
                why = "its lm_head was not called on the final hidden states" if "hidden" not in captured else \
                    "the lm_head input is not the [batch, tokens, hidden] final hidden states"
                self._fall_back(why)
            logits = outputs.get("logits") if isinstance(outputs, dict) else getattr(outputs, "logits", None)
            if logits is None or tuple(logits.shape[:-1]) != tuple(labels.shape):
                raise RuntimeError(f"{type(self.model).__name__} returned no logits of shape {tuple(labels.shape)} + "
                                   f"[vocab] (got {getattr(logits, 'shape', None)})")
            result = fusion_loss(logits, labels, fusion_targets["teacher_ids"], fusion_targets["teacher_logits"],
                                 **common)
        # Only the model output's own fields survive DDP / FSDP (they rebuild the output object):
        # the loss goes into ``loss``, the logged components stay here for the caller.
        outputs["loss"] = result.loss if spec["components"] else result
        self.last_components = (result.clm_loss, result.fusion_loss) if spec["components"] else None
        self.last_fused = hidden is not None
        return outputs


def install_fused_forward(model: nn.Module) -> FusedForward:
    """Give ``model`` (the plain transformers model under any wrapper) the ``fusion_targets``
    keyword on its instance ``forward``; idempotent. Returns the :class:`FusedForward` state."""
    state = getattr(model, _ATTR, None)
    if isinstance(state, FusedForward):
        return state
    state = FusedForward(model, model.forward)

    def patched(*args, **kwargs):
        return state(*args, **kwargs)

    functools.update_wrapper(patched, state.original)  # keeps the signature the Trainer inspects
    object.__setattr__(model, "forward", patched)
    object.__setattr__(model, _ATTR, state)
    return state
