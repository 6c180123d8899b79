"""Cost models: what a model costs after an allocation, without rebuilding it.

A cost model is a callable ``cost(allocation) -> float`` (`Cost`), non-increasing as units are removed, which the
budget search (`prunekit.allocate.budget.allocate_budget`) bisects on. Three live side by side:

- `params_cost`: parameters left (exact, from the groups alone);
- `macs_cost`: multiply-accumulates of one forward on the example inputs: every conv / linear layer's MACs scale
  with the kept fractions of its weight's output and input dims, other MACs (attention products) stay;
- `prunekit.planning.latency.latency_cost`: milliseconds on a named runtime, from per-layer timings at a few
  widths (measured once, cached on disk, interpolated).

`layer_widths` is what MACs and latency share: the kept fraction of every conv / linear layer's output and input
channels under an allocation.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..graph.types import Allocation, ChannelGroup

Cost = Callable[[Allocation], float]


def is_weight_layer(module: nn.Module) -> bool:
    """Conv, linear and GPT-2 ``Conv1D`` modules with a weight of rank >= 2 (the layers whose work scales with
    their channels)."""
    w = getattr(module, "weight", None)
    layer = isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) or type(module).__name__ == "Conv1D"
    return layer and isinstance(w, torch.Tensor) and w.dim() >= 2


def layer_macs(model: nn.Module, inputs: Any, forward_fn: Optional[Callable] = None) -> Dict[str, int]:
    """MACs of each conv / linear / GPT-2 Conv1D module in one forward on `inputs` (name -> MACs)."""
    from torch.utils.flop_counter import FlopCounterMode

    from ..graph.trace import call_model

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        call_model(model, inputs, forward_fn)
    counts = counter.get_flop_counts()
    out = {}
    for name, m in model.named_modules():
        if is_weight_layer(m):
            key = name if name else "Global"
            flops = counts.get(key) or counts.get(f"{type(model).__name__}.{name}") or {}
            if flops:
                out[name] = int(sum(flops.values())) // 2
    return out


def layer_widths(model: nn.Module, groups: Sequence[ChannelGroup],
                 layers: Sequence[str]) -> Callable[[Allocation], Dict[str, Tuple[float, float]]]:
    """A function allocation -> {layer: (kept fraction of output channels, of input channels)} for `layers`.

    Output channels are the weight's dim 0 and input channels its dim 1 (dim 1 of size 1, as in depthwise
    convolutions, never shrinks). A group removes n * k positions from each member's dim (k = index_map columns).
    """
    modules = dict(model.named_modules())
    sizes = {name: tuple(modules[name].weight.shape[:2]) for name in layers}
    touches: List[Tuple[str, str, int, int]] = []
    for g in groups:
        for m in g.members:
            if m.param == "weight" and m.module in sizes and m.dim in (0, 1):
                touches.append((g.id, m.module, m.dim, int(m.index_map.shape[1]) if m.index_map.dim() > 1 else 1))

    def widths(allocation: Allocation) -> Dict[str, Tuple[float, float]]:
        cut: Dict[Tuple[str, int], int] = {}
        for gid, module, dim, k in touches:
            n = int(allocation.get(gid, 0))
            if n > 0:
                cut[(module, dim)] = cut.get((module, dim), 0) + n * k
        out = {}
        for name, (out_c, in_c) in sizes.items():
            f0 = max(1 - cut.get((name, 0), 0) / out_c, 0.0)
            f1 = max(1 - cut.get((name, 1), 0) / in_c, 0.0) if in_c > 1 else 1.0
            out[name] = (f0, f1)
        return out

    return widths


def macs_cost(model: nn.Module, groups: Sequence[ChannelGroup], inputs: Any,
              forward_fn: Optional[Callable] = None) -> Cost:
    """MACs of one forward on `inputs` after an allocation (see the module docstring)."""
    from ..metrics.macs import count_macs

    per_layer = layer_macs(model, inputs, forward_fn)
    total = count_macs(model, inputs) if forward_fn is None else sum(per_layer.values())
    rest = max(0, total - sum(per_layer.values()))
    widths = layer_widths(model, groups, list(per_layer))

    def cost(allocation: Allocation) -> float:
        kept = widths(allocation)
        return float(rest) + sum(macs * kept[name][0] * kept[name][1] for name, macs in per_layer.items())

    return cost


def params_cost(model: nn.Module, groups: Sequence[ChannelGroup]) -> Cost:
    """An exact parameter counter: cost(allocation) = parameters left after removing the allocated units.

    Each group shrinks every parameter it touches by n_remove * k positions along the member's dim (k = index_map
    columns); parameters shared by several modules are counted once; buffers are not parameters.
    """
    shapes: Dict[int, List[int]] = {}
    for p in model.parameters():
        shapes.setdefault(id(p), list(p.shape))
    touches: List[Tuple[str, int, int, int]] = []
    for group in groups:
        seen = set()
        for member in group.members:
            tensor = getattr(model.get_submodule(member.module), member.param, None)
            if not isinstance(tensor, torch.nn.Parameter) or (id(tensor), member.dim) in seen:
                continue
            seen.add((id(tensor), member.dim))
            width = member.index_map.shape[1] if member.index_map.dim() > 1 else 1
            touches.append((group.id, id(tensor), member.dim, width))

    def cost(allocation: Allocation) -> float:
        current = {key: list(shape) for key, shape in shapes.items()}
        for group_id, key, dim, width in touches:
            current[key][dim] -= int(allocation.get(group_id, 0)) * width
        return float(sum(math.prod(max(s, 0) for s in shape) for shape in current.values()))

    return cost
