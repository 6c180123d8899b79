"""Normalisation layers: per-channel ones are exact; LayerNorm over channels is inexact; RMSNorm is made exact
by rescaling its weight; GroupNorm prunes whole groups."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..labels import along, consume
from . import first_output, input_tensor, register_layer, register_layer_predicate

_PER_CHANNEL = ("weight", "bias", "running_mean", "running_var")


@register_layer(nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
class BatchNormRule:
    """Per-channel statistics and affine parameters along dim 1: removal is exact."""

    def propagate(self, state, name, m, args, kwargs, output):
        x, out = input_tensor(args, kwargs), first_output(output)
        ids = consume(state.uf, state.get(x), 1, x.shape[1], f"module '{name}'")
        for p in _PER_CHANNEL:
            if getattr(m, p, None) is not None:
                state.member(name, p, 0, ids, "norm")
        state.set(out, along(ids, 1, out.dim()))

    def fixup(self, m, old_shapes):
        for p in _PER_CHANNEL:
            t = getattr(m, p, None)
            if t is not None:
                m.num_features = t.shape[0]
                return


@register_layer(nn.GroupNorm)
class GroupNormRule:
    """Statistics per group of C/G channels: removing whole groups is exact, so a group's channels are one unit."""

    def propagate(self, state, name, m, args, kwargs, output):
        x, out = input_tensor(args, kwargs), first_output(output)
        ids = consume(state.uf, state.get(x), 1, x.shape[1], f"module '{name}'")
        for block in ids.reshape(m.num_groups, -1):
            state.uf.union_all(block)
        if m.affine:
            state.member(name, "weight", 0, ids, "norm")
            state.member(name, "bias", 0, ids, "norm")
        state.set(out, along(ids, 1, out.dim()))

    def fixup(self, m, old_shapes):
        per_group = old_shapes["__num_channels__"] // m.num_groups
        m.num_channels = m.weight.shape[0] if m.affine else m.num_channels
        m.num_groups = m.num_channels // per_group


def _norm_over_last(state, name, m, args, kwargs, output, params, inexact_reason):
    x, out = input_tensor(args, kwargs), first_output(output)
    shape = tuple(getattr(m, "normalized_shape", (x.shape[-1],)) or (x.shape[-1],))
    lab = state.get(x)
    if len(shape) > 1:
        if bool((lab >= 0).any()):
            state.uf.pin(lab[lab >= 0], f"{type(m).__name__} '{name}' normalises over several dims")
        state.set(out, lab)
        return
    ids = consume(state.uf, lab, -1, x.shape[-1], f"module '{name}'")
    for p in params:
        if getattr(m, p, None) is not None:
            state.member(name, p, 0, ids, "norm")
    if inexact_reason:
        state.uf.mark_inexact(ids, inexact_reason.format(name=name))
    state.set(out, along(ids, out.dim() - 1, out.dim()))


@register_layer(nn.LayerNorm)
class LayerNormRule:
    """Mean and variance over the channels: removing channels changes them, so removal is valid but inexact."""

    def propagate(self, state, name, m, args, kwargs, output):
        _norm_over_last(state, name, m, args, kwargs, output, ("weight", "bias"),
                        "LayerNorm '{name}' normalises over these channels (removal changes its mean and variance)")

    def kept_forward(self, m, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """What the pruned norm computes, on the original's tensors: statistics over the kept channels only.

        Args: x [..., C]; keep [C'] kept positions. Returns [..., C], zero at the removed positions.
        """
        import torch.nn.functional as F

        if getattr(m, "data_format", "") == "channels_first":  # [B, C, H, W] normalised over C
            return self.kept_forward(_Last(m), x.movedim(1, -1), keep).movedim(-1, 1)
        w = m.weight.index_select(0, keep) if m.weight is not None else None
        b = m.bias.index_select(0, keep) if m.bias is not None else None
        kept = F.layer_norm(x.index_select(-1, keep), (keep.numel(),), w, b, m.eps)
        return torch.zeros_like(x).index_copy(-1, keep, kept)

    def fixup(self, m, old_shapes):
        n = m.weight.shape[0] if m.weight is not None else m.normalized_shape[0]
        m.normalized_shape = (n,)


class _Last:
    """A view of a channels-first LayerNorm as a channels-last one (same tensors)."""

    def __init__(self, m):
        self.weight, self.bias, self.eps = m.weight, m.bias, m.eps


def _is_rms_norm(m: nn.Module) -> bool:
    w = getattr(m, "weight", None)
    return type(m).__name__.endswith("RMSNorm") and isinstance(w, torch.Tensor) and w.dim() == 1 \
        and "gemma" not in type(m).__name__.lower()


@register_layer(nn.RMSNorm)
@register_layer_predicate(_is_rms_norm)
class RMSNormRule:
    """RMS over the channels. Removed channels that were zero add nothing to the sum of squares, so scaling the
    weight by sqrt(C / C_kept) keeps the output equal to the masked original (up to eps)."""

    def propagate(self, state, name, m, args, kwargs, output):
        _norm_over_last(state, name, m, args, kwargs, output, ("weight",), "")

    def fixup(self, m, old_shapes):
        old = old_shapes.get("weight")
        new = m.weight.shape[0]
        if old is not None and old[0] != new:
            with torch.no_grad():
                m.weight.mul_(math.sqrt(old[0] / new))
            # rms' = sqrt(S/C' + eps') equals sqrt(C/C') * sqrt(S/C + eps) when eps' = eps * C / C'
            for attr in ("variance_epsilon", "eps"):
                if isinstance(getattr(m, attr, None), float):
                    setattr(m, attr, getattr(m, attr) * old[0] / new)
        if hasattr(m, "normalized_shape"):
            m.normalized_shape = (new,)
        if hasattr(m, "hidden_size"):
            m.hidden_size = new
