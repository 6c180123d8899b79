"""The allocator contract, the shared constraints and the shared ranking step.

An allocator turns `Scores` and a `Budget` into an `Allocation` (group id -> units to remove). Every policy follows
the same path: pick the eligible groups (`eligible_groups`), `propose` counts, then `apply_constraints` enforces what
every plan must respect. Policies never see a constraint twice and never skip one.

Eligibility: a group is prunable, has a score (criteria leave out groups they cannot score) and is not excluded by
the budget's name patterns. A pattern matches a group when it matches a module whose own units the group removes,
i.e. a member whose role is not ``"in"``: ignoring ``fc`` protects fc's outputs, while the channels fc consumes may
still go (their producers decide).
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence

import torch

from ..errors import ConfigError
from ..graph.types import Allocation, Budget, ChannelGroup, Scores
from ..importance.base import build_config, normalize


@dataclass
class AllocatorConfig:
    """Constraints shared by every policy.

    Attributes:
        max_ratio: at most this fraction of a group's units is removed (None: no limit).
        min_keep_channels: every group keeps at least this many units (on top of `group.min_keep` and 1).
        round_to: kept channel counts are multiples of this (combined with `group.round_to` by max; head groups
            only use their own `round_to`).
    """

    max_ratio: Optional[float] = None
    min_keep_channels: Optional[int] = None
    round_to: Optional[int] = None

    def __post_init__(self):
        if self.max_ratio is not None and not 0.0 <= self.max_ratio <= 1.0:
            raise ConfigError(f"allocator max_ratio must lie in [0, 1], got {self.max_ratio}")
        if self.min_keep_channels is not None and self.min_keep_channels < 0:
            raise ConfigError(f"allocator min_keep_channels must be >= 0, got {self.min_keep_channels}")
        if self.round_to is not None and self.round_to < 1:
            raise ConfigError(f"allocator round_to must be >= 1, got {self.round_to}")


class Allocator:
    """Base class of allocation policies; subclasses implement `propose`."""

    Config = AllocatorConfig
    # Whether a budget search may refine this policy's allocation group by group (False keeps it uniform).
    refinable: bool = True

    def __init__(self, config: Any = None, **overrides: Any):
        self.config = build_config(self.Config, config, overrides)

    def allocate(self, groups: Sequence[ChannelGroup], scores: Optional[Scores], budget: Budget,
                 model: Optional[torch.nn.Module] = None) -> Allocation:
        """Units to remove per group, constraints applied.

        Args:
            groups: every channel group of the model.
            scores: criterion scores (group id -> [size]); groups without a score are left alone.
            budget: a ratio budget (``budget.target`` is None). Params/MACs targets go through
                `prunekit.allocate.budget.allocate_budget`, which searches the ratio.
            model: unused by the built-in policies; available to policies that need shapes.

        Returns:
            {group id: n_remove} for every group (0 for groups left alone).
        """
        if budget.target is not None:
            raise ConfigError(f"{type(self).__name__}.allocate takes a ratio budget; for a '{budget.target}' "
                              f"target use prunekit.allocate.budget.allocate_budget(policy, ..., cost=...)")
        chosen = eligible_groups(groups, scores, budget)
        proposal = self.propose(chosen, scores, budget.ratio) if chosen else {}
        return apply_constraints(groups, proposal, self.config.max_ratio, self.config.min_keep_channels,
                                 self.config.round_to)

    def propose(self, groups: List[ChannelGroup], scores: Optional[Scores], ratio: float) -> Allocation:
        """Raw counts for the eligible `groups` before constraints."""
        raise NotImplementedError

    def prepare(self, groups: Sequence[ChannelGroup], scores: Optional[Scores], cost: Any) -> None:
        """Called once by a budget search before it allocates, with the budget's cost model
        (``cost(allocation) -> float``, see `prunekit.planning.cost`). Policies that weigh units by what they
        cost (params, MACs, measured latency) read it here; the built-in ratio policies ignore it."""

    def caps(self, groups: Iterable[ChannelGroup]) -> Dict[str, int]:
        """Most units each group may lose under the configured limits (before rounding)."""
        return {g.id: removable(g, self.config.max_ratio, self.config.min_keep_channels) for g in groups}


def module_matches(group: ChannelGroup, patterns: Sequence[str]) -> bool:
    """True when a glob pattern matches a module whose own units the group removes (a member not of role "in")."""
    names = {m.module for m in group.members if m.role != "in"} or {m.module for m in group.members}
    return any(fnmatch.fnmatchcase(name, pat) for name in names for pat in patterns)


def eligible_groups(groups: Sequence[ChannelGroup], scores: Optional[Scores], budget: Budget) -> List[ChannelGroup]:
    """Prunable groups with a score, selected by `budget.targets` and not excluded by `budget.ignore`."""
    chosen = []
    for group in groups:
        if not group.prunable or group.size <= 1:
            continue
        if scores is not None and group.id not in scores:
            continue
        if budget.ignore and module_matches(group, budget.ignore):
            continue
        if budget.targets and not module_matches(group, budget.targets):
            continue
        chosen.append(group)
    return chosen


def removable(group: ChannelGroup, max_ratio: Optional[float] = None, min_keep_channels: Optional[int] = None) -> int:
    """Most units `group` may lose: keeps max(group.min_keep, min_keep_channels, 1) and respects `max_ratio`."""
    if not group.prunable:
        return 0
    keep = max(int(group.min_keep), int(min_keep_channels or 0), 1)
    cap = group.size - keep
    if max_ratio is not None:
        cap = min(cap, int(math.floor(max_ratio * group.size + 1e-9)))
    return max(cap, 0)


def apply_constraints(groups: Sequence[ChannelGroup], allocation: Allocation, max_ratio: Optional[float] = None,
                      min_keep_channels: Optional[int] = None, round_to: Optional[int] = None) -> Allocation:
    """Make an allocation legal.

    Per group: nothing from unprunable groups; at most `removable` units (min keep, max ratio, never all); then the
    kept count is rounded *up* to a multiple of max(group.round_to, round_to) (head groups: group.round_to only), so
    rounding only ever removes less. If no multiple fits, the group is left whole.

    Args:
        groups: every group (the result has an entry for each).
        allocation: proposed {group id: n_remove}; ids not in `groups` raise `ConfigError`.
        max_ratio / min_keep_channels / round_to: the limits (see `AllocatorConfig`).

    Returns:
        {group id: n_remove} for every group.
    """
    by_id = {g.id: g for g in groups}
    unknown = sorted(set(allocation) - set(by_id))
    if unknown:
        raise ConfigError(f"allocation names unknown groups {unknown[:5]}")
    result: Allocation = {}
    for group in groups:
        n = max(int(allocation.get(group.id, 0)), 0)
        n = min(n, removable(group, max_ratio, min_keep_channels))
        step = max(int(group.round_to), int(round_to or 1) if group.unit == "channel" else 1)
        if n and step > 1:
            keep = -(-(group.size - n) // step) * step
            n = group.size - keep if keep <= group.size else 0
        result[group.id] = max(n, 0)
    return Allocation(_tied(groups, result, max_ratio, min_keep_channels, round_to))


def _tied(groups: Sequence[ChannelGroup], result: Dict[str, int], max_ratio, min_keep_channels, round_to
          ) -> Dict[str, int]:
    """Groups of one class (``tags["tied"]``: one attribute, such as a config's head count, sizes them all) lose
    the same number of units: the fewest any member may lose, lowered until every member's rounding allows it."""
    classes: Dict[str, List[ChannelGroup]] = {}
    for group in groups:
        if group.tags.get("tied"):
            classes.setdefault(str(group.tags["tied"]), []).append(group)
    for members in classes.values():
        n = min(result.get(g.id, 0) for g in members)
        while n > 0:
            steps = [max(int(g.round_to), int(round_to or 1) if g.unit == "channel" else 1) for g in members]
            if all(n <= removable(g, max_ratio, min_keep_channels) and (g.size - n) % s == 0
                   for g, s in zip(members, steps)):
                break
            n -= 1
        for g in members:
            result[g.id] = n
    return result


def rank_remove(groups: Sequence[ChannelGroup], scores: Scores, ratio: float, caps: Dict[str, int],
                normalizer: str = "mean", per_unit: bool = True) -> Allocation:
    """One ranking over `groups`: remove the lowest normalised scores, ratio * (their units), within `caps`.

    Args:
        groups: the groups sharing the ranking.
        scores: group id -> [size]; each group is normalised with `normalizer` first (not when the scores are
            already comparable across groups: ``scores.across_groups``).
        ratio: fraction of all units of the ranked groups to remove.
        caps: group id -> most units the group may lose; a capped group's further units are skipped, so the
            next-lowest units of other groups are taken instead.
        normalizer: see `prunekit.importance.base.normalize`.
        per_unit: rank channel groups and head groups separately (a head is not comparable with a channel).

    Returns:
        {group id: n_remove} for the given groups.
    """
    if getattr(scores, "across_groups", False):
        normalizer = "none"
    if per_unit:
        out: Allocation = {}
        for unit in sorted({g.unit for g in groups}):
            same = [g for g in groups if g.unit == unit]
            out.update(rank_remove(same, scores, ratio, caps, normalizer, per_unit=False))
        return out
    values, owners = [], []
    for idx, group in enumerate(groups):
        s = _checked(scores, group)
        cap = caps.get(group.id, 0)
        if cap <= 0:
            continue
        lowest = torch.sort(normalize(s, normalizer), stable=True).values[:cap]
        values.append(lowest)
        owners.append(torch.full((lowest.numel(),), idx, dtype=torch.long))
    total = sum(g.size for g in groups)
    n_total = int(math.floor(ratio * total + 1e-9))
    out = {g.id: 0 for g in groups}
    if not values or n_total <= 0:
        return out
    order = torch.argsort(torch.cat(values), stable=True)[:n_total]
    counts = torch.bincount(torch.cat(owners)[order], minlength=len(groups))
    for idx, group in enumerate(groups):
        out[group.id] = int(counts[idx])
    return out


def _checked(scores: Scores, group: ChannelGroup) -> torch.Tensor:
    s = scores[group.id].detach().float().cpu().reshape(-1)
    if s.numel() != group.size:
        raise ConfigError(f"scores of group {group.id} have {s.numel()} entries, expected {group.size}")
    if not torch.isfinite(s).all():
        raise ConfigError(f"scores of group {group.id} contain NaN or inf")
    return s
