"""Expected MACs of the search space as a differentiable function of the width distributions, and the paper's step
loss around the target.

Every conv / linear layer's MACs scale with the kept fractions of its weight's output (dim 0) and input (dim 1)
channels, exactly as the engine's budget cost model (`prunekit.planning.cost.macs_cost`) counts them; here the kept
channels of a searched group are its expected width ``E[c] = sum_j p_j c_j`` (p = softmax of its logits), so at a
one-hot distribution the expected MACs are the engine's MACs of that width configuration. Like the paper, the
expectation of a layer with two searched dims is taken as the product of the two expected fractions.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch import nn

from ...planning.cost import layer_macs
from .space import SearchableGroup


class ExpectedMacs(nn.Module):
    """``forward(kept) -> MACs`` where `kept` maps a group id to its (expected) kept channels (a 0-d tensor).

    Args:
        model: the unpruned model (only read: per-layer MACs on `inputs` and weight shapes).
        searched: the searched groups.
        inputs: example inputs of batch 1 (MACs are per example).

    Attributes:
        full: MACs of the unpruned model.
        fixed: MACs of operations no group changes (attention products, unsearched layers' share is kept per layer).
    """

    def __init__(self, model: nn.Module, searched: Sequence[SearchableGroup], inputs: Any):
        super().__init__()
        from ...metrics.macs import count_macs

        per_layer = layer_macs(model, inputs)
        self.full = float(count_macs(model, inputs))
        self.fixed = float(max(0.0, self.full - sum(per_layer.values())))
        modules = dict(model.named_modules())
        self.layers: List[Tuple[str, float, int, int]] = [
            (name, float(macs), int(modules[name].weight.shape[0]), int(modules[name].weight.shape[1]))
            for name, macs in per_layer.items()]
        # (group id, layer, dim, positions per group channel): which searched group shrinks which weight dim
        index = {name: i for i, (name, *_rest) in enumerate(self.layers)}
        self.touches: List[Tuple[str, int, int, int]] = []
        for s in searched:
            for m in s.group.members:
                if m.param == "weight" and m.module in index and m.dim in (0, 1):
                    k = int(m.index_map.shape[1]) if m.index_map.dim() > 1 else 1
                    self.touches.append((s.id, index[m.module], m.dim, k))
        self.sizes = {s.id: s.size for s in searched}

    def forward(self, kept: Dict[str, torch.Tensor]) -> torch.Tensor:
        cut: Dict[Tuple[int, int], Any] = {}
        for gid, layer, dim, k in self.touches:
            removed = (self.sizes[gid] - kept[gid]) * k
            cut[(layer, dim)] = cut.get((layer, dim), 0.0) + removed
        total: Any = torch.tensor(self.fixed)
        for i, (_, macs, out_c, in_c) in enumerate(self.layers):
            f0 = 1.0 - cut.get((i, 0), 0.0) / out_c
            f1 = 1.0 - cut.get((i, 1), 0.0) / in_c if in_c > 1 else 1.0
            total = total + macs * f0 * f1
        return total


def step_cost_loss(expected: torch.Tensor, argmax_macs: float, target: float, tolerance: float) -> torch.Tensor:
    """The paper's cost loss: ``log E[F]`` when the argmax architecture's MACs exceed the target R, ``-log E[F]``
    when they fall below ``R - tolerance``, 0 inside the band.

    Args:
        expected: expected MACs (0-d tensor, differentiable in the logits).
        argmax_macs: MACs of the argmax widths.
        target: R, the MACs budget. tolerance: t, the width of the band below R (in MACs).
    """
    if argmax_macs > target:
        return torch.log(expected)
    if argmax_macs < target - tolerance:
        return -torch.log(expected)
    return expected.new_zeros(())


def tau_at(progress: float, tau_max: float, tau_min: float) -> float:
    """Cosine-annealed Gumbel temperature at `progress` in [0, 1] (the paper anneals per epoch; we anneal per step,
    which is the same curve sampled finer, and matters for the short searches of a CPU budget)."""
    progress = min(max(progress, 0.0), 1.0)
    return tau_min + (tau_max - tau_min) * (1.0 + math.cos(math.pi * progress)) / 2.0
