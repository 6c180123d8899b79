"""Budgets: a channel ratio, or a params / MACs target reached by bisection on the policy's global ratio.

The cost is any callable ``cost(allocation) -> float`` (e.g. the MACs of the model after pruning, from the caller's
metrics); `params_cost` builds an exact parameter counter from the groups alone. Cost must not increase with the
ratio (true for every built-in policy, since constraints are monotone), so bisection converges.
"""
from __future__ import annotations

import dataclasses
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

    A ratio budget (``budget.target`` None) is passed to the policy as is. A ``params`` / ``macs`` / ``latency``
    target searches the ratio r in (0, 0.999) whose allocation has cost within `tol` (relative) of
    ``keep_fraction * cost({})``. When the ratio alone cannot get within `tol` (many groups move at once), policies
    with ``refinable = True`` are refined one group at a time; others (``uniform``, which must stay uniform: the
    same share of every group, so Hugging Face layers keep equal head counts) keep the closest ratio's allocation.

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
        allocation = Allocation(allocation, ratio=budget.ratio, cost=value, base_cost=base)
        return BudgetResult(allocation, budget.ratio, value, float("nan"), base, 1)
    if cost is None:
        if budget.target != "params" or model is None:
            raise ConfigError(f"budget target '{budget.target}' needs a cost function (e.g. the MACs of the model "
                              f"after pruning); params can use model=... instead")
        cost = params_cost(model, groups)
    policy.prepare(groups, scores, cost)
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
        # the target. Refine greedily from the closest allocation that is still above it: group by group, or, for
        # a policy that must stay uniform, one whole class of alike groups (same size and unit) at a time.
        above = [t for t in trials if t[1] > target]
        if above:
            r, value, allocation = min(above, key=lambda t: t[1])
            if policy.refinable:
                allocation, value, n = _refine(policy, groups, scores, allocation, value, target, tol, cost,
                                               max_evaluations)
            else:  # the allocation at the largest ratio names every group the policy prunes
                prunable = [gid for gid, n in trials[0][2].items() if n > 0]
                allocation, value, n = _refine_classes(policy, groups, scores, allocation, value, target, tol,
                                                       cost, 10 * max_evaluations, prunable)
            trials.extend([(r, value, allocation)] * n)
            candidates = [t for t in trials if abs(t[1] - target) <= abs(value - target)]
            r, value, allocation = min(candidates, key=lambda t: abs(t[1] - target))
    return BudgetResult(Allocation(allocation, ratio=r, cost=value, target_cost=target, base_cost=base), r, value,
                        target, base, len(trials))


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
            ranked = torch.sort(normalize(scores[gid].float(),
                                          "none" if getattr(scores, "across_groups", False) else "mean")).values
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


def _refine_classes(policy: Allocator, groups: Sequence[ChannelGroup], scores: Optional[Scores],
                    allocation: Allocation, value: float, target: float, tol: float, cost: Cost,
                    max_evaluations: int, prunable: Sequence[str] = ()):
    """Like `_refine`, for a policy that must stay uniform: groups of one class (same size and unit, among the
    ids in `prunable`) always lose the same count, so a uniform allocation stays uniform per layer shape (equal head
    counts in every attention layer). A local search over the per-class counts, each kept within one rounding step
    of where the ratio search left it (so every class keeps about the same fraction): each move shifts one class by
    one step (or one class up and another down) to get closest to the target, until within `tol`."""
    from .base import apply_constraints

    by_id = {g.id: g for g in groups}
    caps = policy.caps(by_id.values())
    classes: Dict[Tuple[int, str], List[str]] = {}
    for gid in prunable:
        group = by_id[gid]
        if caps.get(gid, 0) > 0:
            classes.setdefault((group.size, group.unit), []).append(gid)
    keys = list(classes)

    def step(key) -> int:
        g = by_id[classes[key][0]]
        return max(1, g.round_to, policy.config.round_to or 1) if g.unit != "head" else max(1, g.round_to)

    def build(counts: Dict[Tuple[int, str], int]) -> Optional[Dict[str, int]]:
        trial = dict(allocation)
        for key, n in counts.items():
            if n < 0 or n > caps[classes[key][0]]:
                return None
            for gid in classes[key]:
                trial[gid] = n
        trial = apply_constraints(list(by_id.values()), trial, policy.config.max_ratio,
                                  policy.config.min_keep_channels, policy.config.round_to)
        if any(len({trial[gid] for gid in classes[key]}) > 1 for key in keys):
            return None
        return trial

    counts = {key: max(int(allocation.get(gid, 0)) for gid in classes[key]) for key in keys}
    # each class stays within one rounding step of the ratio search's count, so the removed fraction stays about
    # the same in every class (uniform), only the rounding is chosen
    bounds = {key: (counts[key] - step(key), counts[key] + step(key)) for key in keys}
    best = (abs(value - target), value, dict(allocation))
    evaluations = 0
    seen = {tuple(counts[k] for k in keys)}
    while best[0] > tol * target and evaluations < max_evaluations:
        moves = [{k: counts[k] + sign * step(k)} for k in keys for sign in (1, -1)]
        moves += [{a: counts[a] + step(a), b: counts[b] - step(b)} for a in keys for b in keys if a != b]
        improved = None
        for move in moves:
            trial_counts = {**counts, **move}
            signature = tuple(trial_counts[k] for k in keys)
            if signature in seen or evaluations >= max_evaluations or \
                    any(not bounds[k][0] <= trial_counts[k] <= bounds[k][1] for k in move):
                continue
            seen.add(signature)
            trial = build(trial_counts)
            if trial is None:
                continue
            new_value = float(cost(trial))
            evaluations += 1
            if abs(new_value - target) < best[0] and (improved is None or abs(new_value - target) < improved[0]):
                improved = (abs(new_value - target), new_value, trial, trial_counts)
        if improved is None:
            break
        best, counts = improved[:3], improved[3]
    return best[2], best[1], evaluations


def params_cost(model: torch.nn.Module, groups: Sequence[ChannelGroup]) -> Cost:
    """The exact parameter counter (`prunekit.planning.cost.params_cost`, where the cost models live)."""
    from ..planning.cost import params_cost as exact

    return exact(model, groups)
