"""How many blocks each layer loses: LPViT's slope matching under a budget, and the uniform baseline.

The budget is a cost of the kept blocks: any callable ``cost(target, kept_blocks) -> float`` (`params_cost`,
`macs_cost`, or a measured latency table from `prunekit.blocks.cost`). It replaces the reference code's tabulated
power proxy, with the sign fixed: the cost of a layer *falls* as it loses blocks (the reference code's proxy grows
with the pruned fraction, methods.md section 5 (f)).

Slope matching: at the optimum of "least total distortion such that total cost <= budget" every layer sits where the
slope of its distortion curve against its cost equals one common value lambda (the Pareto condition). For a given
lambda each layer takes the point of its curve minimising ``distortion + lambda * cost`` (the tangent point of slope
lambda, well defined even where a curve is not convex); lambda = 2^sigma is found by binary search on sigma in
[-100, 100] until the total cost meets the budget.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Sequence

import torch

from ..errors import ConfigError
from .curves import LayerCurve
from .layout import BlockTarget

CostFn = Callable[[BlockTarget, int], float]


def params_cost(target: BlockTarget, kept_blocks: int) -> float:
    """Weights kept."""
    return float(kept_blocks * target.block_numel)


def macs_cost(tokens: int) -> CostFn:
    """Multiply-accumulates of the kept blocks over `tokens` input rows."""
    def cost(target: BlockTarget, kept_blocks: int) -> float:
        return float(kept_blocks * target.block_numel * tokens)

    return cost


@dataclass
class AllocationResult:
    """Blocks removed per layer, with the cost reached.

    Attributes:
        removed: target param -> number of blocks removed.
        cost / target_cost / dense_cost: cost of the result, of the budget, of the unpruned layers.
        slope: the lambda found (0 for non-slope allocations).
    """

    removed: Dict[str, int]
    cost: float
    target_cost: float
    dense_cost: float
    slope: float = 0.0

    @property
    def relative_error(self) -> float:
        return abs(self.cost - self.target_cost) / max(self.target_cost, 1e-30)


def _max_removed(target: BlockTarget, allowed: torch.Tensor, min_keep: float) -> int:
    """The largest allowed count that keeps at least `min_keep` of the blocks (and at least one block)."""
    n = target.num_blocks
    limit = n - max(1, math.ceil(min_keep * n))
    ok = allowed[allowed <= limit]
    return int(ok.max()) if ok.numel() else 0


def _cost_table(target: BlockTarget, ks: torch.Tensor, cost: CostFn) -> torch.Tensor:
    n = target.num_blocks
    return torch.tensor([cost(target, n - int(k)) for k in ks], dtype=torch.float64)


def slope_match(targets: Sequence[BlockTarget], curves: Dict[str, LayerCurve], keep_fraction: float,
                cost: CostFn = params_cost, min_keep: float = None, iterations: int = 100) -> AllocationResult:
    """LPViT allocation: equal distortion-per-cost slopes, lambda by binary search until cost <= budget.

    Args:
        targets: the layers (with their curves in `curves`).
        curves: param -> `LayerCurve`.
        keep_fraction: budget as a fraction of the dense cost, in (0, 1].
        cost: ``cost(target, kept_blocks)``; must not grow as blocks are removed.
        min_keep: each layer keeps at least this fraction of its blocks; default the reference code's
            min(0.05, (1 - budget) / 2).
        iterations: bisection steps on log2(lambda).

    Returns:
        An `AllocationResult` whose cost is the largest reachable cost not above the budget (the minimum-cost
        allocation when even that is above it).
    """
    if not 0.0 < keep_fraction <= 1.0:
        raise ConfigError(f"prunekit.blocks.slope_match: keep_fraction must be in (0, 1], got {keep_fraction}")
    min_keep = min(0.05, (1.0 - keep_fraction) / 2) if min_keep is None else min_keep
    options = []  # per layer: (allowed ks, distortions, costs)
    for t in targets:
        curve = curves[t.param]
        ks = curve.allowed[curve.allowed <= _max_removed(t, curve.allowed, min_keep)]
        options.append((ks, curve.distortion[ks], _cost_table(t, ks, cost)))
    dense = sum(float(c[0]) for _, _, c in options)
    budget = keep_fraction * dense

    def pick(log_slope: float):
        lam = 2.0 ** log_slope
        chosen = [int(torch.argmin(d + lam * c)) for _, d, c in options]
        return chosen, sum(float(c[i]) for (_, _, c), i in zip(options, chosen))

    lo, hi = -100.0, 100.0
    best, best_cost = pick(hi)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        chosen, total = pick(mid)
        if total <= budget:
            hi, best, best_cost = mid, chosen, total
        else:
            lo = mid
    best, best_cost = _fill_back(options, best, best_cost, budget)
    removed = {t.param: int(ks[i]) for t, (ks, _, _), i in zip(targets, options, best)}
    return AllocationResult(removed, best_cost, budget, dense, 2.0 ** hi)


def _fill_back(options, chosen, total: float, budget: float):
    """Spend what the last bisection step left under the budget: a tangent point can jump over a non-convex
    stretch of a curve, so restore blocks one allowed step at a time, each time in the layer whose step buys the
    most distortion per unit of cost, while the total stays within the budget."""
    chosen = list(chosen)
    while True:
        best_layer, best_gain = None, -1.0
        for layer, ((_, d, c), i) in enumerate(zip(options, chosen)):
            if i == 0:
                continue
            extra = float(c[i - 1] - c[i])
            if total + extra > budget:
                continue
            gain = float(d[i] - d[i - 1]) / max(extra, 1e-30)
            if gain > best_gain:
                best_layer, best_gain = layer, gain
        if best_layer is None:
            return chosen, total
        i = chosen[best_layer]
        total += float(options[best_layer][2][i - 1] - options[best_layer][2][i])
        chosen[best_layer] = i - 1


def uniform(targets: Sequence[BlockTarget], curves: Dict[str, LayerCurve], removed_fraction: float,
            cost: CostFn = params_cost) -> AllocationResult:
    """The same fraction of blocks removed in every layer (rounded to the layout's allowed counts)."""
    if not 0.0 <= removed_fraction < 1.0:
        raise ConfigError(f"prunekit.blocks.uniform: removed_fraction must be in [0, 1), got {removed_fraction}")
    removed, total, dense = {}, 0.0, 0.0
    for t in targets:
        allowed = curves[t.param].allowed
        k = int(allowed[torch.argmin((allowed.double() - removed_fraction * t.num_blocks).abs())])
        removed[t.param] = k
        total += cost(t, t.num_blocks - k)
        dense += cost(t, t.num_blocks)
    return AllocationResult(removed, total, (1 - removed_fraction) * dense, dense)
