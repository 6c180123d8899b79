"""Fold the constant output of removed channels into what consumes them (paper 1's ``update_activation``).

A channel whose BN scale is zero still outputs a constant, act(beta). Removing it would drop that constant from
every layer that reads it, so before removal we add the constant's contribution to the consumer's bias, or
subtract it from the running mean of the BatchNorm that directly follows a bias-free consumer. The constant is
*measured*: the model runs on a zero-ish input with hooks on each consumer's input and the value of the removed
channel is read at the centre of the map (zero padding at the borders is ignored, as in the official code).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, List

import torch
from torch import nn

from ..graph.trace import call_model
from ..graph.types import ChannelGroup


def _centre(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Per-channel value at the centre of every other (spatial / token) dim: [C]."""
    x = x.movedim(dim, -1)
    while x.dim() > 1:
        x = x.select(0, x.shape[0] // 2)
    return x


def fold_removed_channels(model: nn.Module, groups: List[ChannelGroup], removed: Dict[str, torch.Tensor],
                          inputs: Any, tolerance: float = 1e-6) -> Dict[str, List[str]]:
    """Compensate consumers for the constants removed channels carry, in place, before they are removed.

    Only channels that are constant (no dependence on the input: e.g. BN scale 0) are folded; a channel that varies
    with the input is reported in ``"varying"`` and left as is. Returns ``{"folded": [...], "skipped": [...],
    "varying": [...]}`` with module names.
    """
    modules = dict(model.named_modules())
    by_id = {g.id: g for g in groups}
    consumers: Dict[str, Dict[int, List[int]]] = defaultdict(lambda: defaultdict(list))
    for gid, idx in removed.items():
        for m in by_id[gid].members:
            if m.role == "in" and m.param == "weight" and isinstance(modules[m.module], (nn.Conv2d, nn.Conv1d, nn.Linear)):
                consumers[m.module][m.dim].extend(m.positions(torch.as_tensor(idx)).tolist())
    if not consumers:
        return {"folded": [], "skipped": [], "varying": []}
    seen_in: Dict[str, List[torch.Tensor]] = defaultdict(list)
    follower: Dict[str, nn.Module] = {}
    outputs: Dict[int, str] = {}
    handles = []

    def grab(name):
        def hook(module, args, out):
            seen_in[name].append(args[0].detach())
            outputs[id(out)] = name
        return hook

    def bn_watch(module, args):
        src = outputs.get(id(args[0]))
        if src is not None and isinstance(module, nn.modules.batchnorm._BatchNorm):
            follower.setdefault(src, module)

    was = model.training
    try:
        for name in consumers:
            handles.append(modules[name].register_forward_hook(grab(name)))
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                handles.append(m.register_forward_pre_hook(bn_watch))
        model.eval()
        with torch.no_grad():
            variants = [inputs] + ([inputs * 0.0 + 1.0] if isinstance(inputs, torch.Tensor) else [])
            for x in variants:
                call_model(model, x)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    report = {"folded": [], "skipped": [], "varying": []}
    with torch.no_grad():
        for name, dims in consumers.items():
            layer = modules[name]
            in_dim = 1 if not isinstance(layer, nn.Linear) else -1
            positions = sorted(set(p for v in dims.values() for p in v))
            xs = seen_in[name]
            values = torch.stack([_centre(x, in_dim % x.dim()) for x in xs])  # [variants, C]
            const = values[0, positions]
            varying = (values[:, positions] - const).abs().amax(0) > tolerance * (1 + const.abs())
            if varying.any():
                report["varying"].append(name)
            keep_pos = [p for p, v in zip(positions, varying.tolist()) if not v]
            if not keep_pos:
                continue
            w = layer.weight[:, keep_pos]
            c = values[0, keep_pos]
            offset = (w * c.view(1, -1, *([1] * (w.dim() - 2)))).sum(dim=tuple(range(1, w.dim())))
            if layer.bias is not None:
                layer.bias.add_(offset)
            elif name in follower and follower[name].running_mean is not None:
                follower[name].running_mean.sub_(offset)
            else:
                report["skipped"].append(name)
                continue
            report["folded"].append(name)
    return report
