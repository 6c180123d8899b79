"""Budgets: a channel ratio, or a params / MACs target reached by bisection on the policy's global ratio.

The cost is any callable ``cost(allocation) -> float`` (e.g. the MACs of the model after pruning, from the caller's
metrics); `params_cost` builds an exact parameter counter from the groups alone. Cost must not increase with the
ratio (true for every built-in policy, since constraints are monotone), so bisection converges.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..errors import ConfigError
from ..graph.types import Allocation, Budget, ChannelGroup, Scores
from .base import Allocator

Cost = Callable[[Allocation], float]
_LOW, _HIGH = 1e-6, 0.999


@dataclass
class BudgetResult:
    """Outcome of a budget search.

    Attributes:
        allocation: the chosen allocation (constraints applied by the policy).
        ratio: the global ratio given to the policy.
        cost / target_cost / base_cost: cost of the result, the target (keep_fraction * base), the unpruned cost.
        evaluations: how many allocations were costed.
    """

    allocation: Allocation
    ratio: float
    cost: float
    target_cost: float
    base_cost: float
    evaluations: int

    @property
    def relative_error(self) -> float:
        """|cost - target| / target."""
        return abs(self.cost - self.target_cost) / max(abs(self.target_cost), 1e-12)


def allocate_budget(policy: Allocator, groups: Sequence[ChannelGroup], scores: Optional[Scores], budget: Budget,
                    cost: Optional[Cost] = None, model: Optional[torch.nn.Module] = None, tol: float = 0.02,
                    max_evaluations: int = 40) -> BudgetResult:
    """Allocate under a budget.

    A ratio budget (``budget.target`` None) is passed to the policy as is. A ``params`` / ``macs`` target searches
    the ratio r in (0, 0.999) whose allocation has cost within `tol` (relative) of ``keep_fraction * cost({})``.

    Args:
        policy: any allocator (its constraints apply at every step).
        groups / scores: as for `Allocator.allocate`.
        budget: the budget.
        cost: cost(allocation) -> float; for a ``params`` target it defaults to `params_cost(model, groups)`.
        model: needed only for the default params cost.
        tol: relative tolerance on the target.
        max_evaluations: bisection steps at most.

    Returns:
        a `BudgetResult`; when discreteness makes `tol` unreachable, the closest allocation found.

    Raises:
        ConfigError: no cost function, or the target is below what the constraints allow at the largest ratio.
    """
    if budget.target is None:
        allocation = policy.allocate(groups, scores, budget)
        value = float(cost(allocation)) if cost is not None else float("nan")
        base = float(cost({})) if cost is not None else float("nan")
        return BudgetResult(allocation, budget.ratio, value, float("nan"), base, 1)
    if cost is None:
        if budget.target != "params" or model is None:
            raise ConfigError(f"budget target '{budget.target}' needs a cost function (e.g. the MACs of the model "
                              f"after pruning); params can use model=... instead")
        cost = params_cost(model, groups)
    base = float(cost({}))
    target = budget.keep_fraction * base
    as_ratio = lambda r: dataclasses.replace(budget, ratio=r, target=None)  # noqa: E731
    trials: List[Tuple[float, float, Allocation]] = []

    def evaluate(r: float) -> float:
        allocation = policy.allocate(groups, scores, as_ratio(r))
        value = float(cost(allocation))
        trials.append((r, value, allocation))
        return value

    if evaluate(_HIGH) > target * (1 + tol):
        raise ConfigError(f"budget unreachable: keeping {budget.keep_fraction:.3f} of {budget.target} needs cost "
                          f"{target:.4g}, but the largest ratio {_HIGH} still costs {trials[-1][1]:.4g} "
                          f"(base {base:.4g}); relax max_ratio / min_keep / ignore or the target")
    lo, hi = 0.0, _HIGH
    while len(trials) < max_evaluations and abs(trials[-1][1] - target) > tol * target and hi - lo > 1e-7:
        mid = max(0.5 * (lo + hi), _LOW)
        if evaluate(mid) > target:
            lo = mid
        else:
            hi = mid
    r, value, allocation = min(trials, key=lambda t: abs(t[1] - target))
    if abs(value - target) > tol * target:
        # A policy moves many groups at once (uniform: every group of one size), so the ratio alone can jump over
        # the target. Refine greedily from the closest allocation that is still above it.
        above = [t for t in trials if t[1] > target]
        if above:
            r, value, allocation = min(above, key=lambda t: t[1])
            allocation, value, n = _refine(policy, groups, scores, allocation, value, target, tol, cost,
                                           max_evaluations)
            trials.extend([(r, value, allocation)] * n)
    return BudgetResult(allocation, r, value, target, base, len(trials))


def _refine(policy: Allocator, groups: Sequence[ChannelGroup], scores: Optional[Scores], allocation: Allocation,
            value: float, target: float, tol: float, cost: Cost, max_evaluations: int):
    """Remove one more rounding step at a time from the group whose next unit scores lowest, until the cost is
    within `tol` of the target (never going below it by more than `tol`)."""
    from .base import apply_constraints
    from ..importance.base import normalize

    allocation = dict(allocation)
    by_id = {g.id: g for g in groups}
    caps = policy.caps(by_id.values())
    evaluations = 0
    blocked: set = set()
    while value > target * (1 + tol) and evaluations < max_evaluations:
        best, best_score = None, None
        for gid, group in by_id.items():
            if gid in blocked or scores is None or gid not in scores or caps.get(gid, 0) <= allocation.get(gid, 0):
                continue
            ranked = torch.sort(normalize(scores[gid].float(), "mean")).values
            nxt = allocation.get(gid, 0)
            if nxt >= ranked.numel():
                continue
            if best_score is None or float(ranked[nxt]) < best_score:
                best, best_score = gid, float(ranked[nxt])
        if best is None:
            break
        step = max(1, by_id[best].round_to, policy.config.round_to or 1) if by_id[best].unit != "head" else \
            max(1, by_id[best].round_to)
        trial = dict(allocation)
        trial[best] = min(caps[best], trial.get(best, 0) + step)
        trial = apply_constraints(list(by_id.values()), trial, policy.config.max_ratio,
                                  policy.config.min_keep_channels, policy.config.round_to)
        if trial.get(best, 0) <= allocation.get(best, 0):
            blocked.add(best)
            continue
        new_value = float(cost(trial))
        evaluations += 1
        if new_value < target * (1 - tol):
            blocked.add(best)
            continue
        allocation, value = trial, new_value
    return allocation, value, evaluations


def params_cost(model: torch.nn.Module, groups: Sequence[ChannelGroup]) -> Cost:
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
