"""Soft pruning: the same plan applied as masks (parametrizations) instead of removal.

Masked parameters are multiplied by a fixed 0/1 mask, so training sees them as zero and their gradients vanish.
`make_physical` later removes the masks and the channels with the same plan.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..graph import analyze
from .plan import PruningPlan, make_inputs


class ChannelMask(nn.Module):
    """Multiplies a tensor by a fixed mask that zeroes `positions` along `dim`."""

    def __init__(self, shape, dim: int, positions: torch.Tensor):
        super().__init__()
        mask_shape = [1] * len(shape)
        mask_shape[dim] = shape[dim]
        mask = torch.ones(mask_shape)
        index = [slice(None)] * len(shape)
        index[dim] = positions
        mask[tuple(index)] = 0.0
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask.to(weight.dtype)


def apply_soft(model: nn.Module, plan: PruningPlan, inputs: Any = None,
               forward_fn: Optional[Callable] = None) -> nn.Module:
    """Register masks on every parameter slice the plan removes (in place); buffers are left as they are."""
    plan.check_model(model)
    inputs = inputs if inputs is not None else make_inputs(plan.inputs)
    analysis = analyze(model, inputs, forward_fn=forward_fn)
    by_id = {g.id: g for g in analysis.groups}
    modules = dict(model.named_modules())
    cuts: Dict[tuple, set] = defaultdict(set)
    for gid, idx in plan.removed_tensors().items():
        for m in by_id[gid].members:
            if m.param in modules[m.module]._parameters:
                cuts[(m.module, m.param, m.dim)].update(m.positions(idx).tolist())
    for (mod, pname, dim), pos in cuts.items():
        module = modules[mod]
        shape = getattr(module, pname).shape
        parametrize.register_parametrization(module, pname, ChannelMask(shape, dim, torch.tensor(sorted(pos))))
    model.prunekit_soft_plan = plan
    return model


def make_physical(model: nn.Module, plan: PruningPlan, inputs: Any = None,
                  forward_fn: Optional[Callable] = None, verify: bool = True) -> nn.Module:
    """Fold the masks away and remove the masked channels for real (in place); returns the model."""
    from ..api import apply

    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for pname in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, pname, leave_parametrized=True)
    if hasattr(model, "prunekit_soft_plan"):
        del model.prunekit_soft_plan
    return apply(model, plan, inputs, forward_fn=forward_fn, inplace=True, verify=verify)
