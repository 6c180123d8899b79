"""Scoped allocation: one ranking per scope, each with its own ratio.

Group channel pruning (GCP, Chu et al., Applied Intelligence 2022, "Group channel pruning and spatial attention
distilling for object detection"): the prunable layers are split into groups by feature-map scale and module
similarity, and each group gets its own threshold t_g = the p_g-quantile of its scores. Here a scope is either

- a module-name glob pattern (``by=("pattern",)``, the default): ``ratios={"backbone.*": 0.2, "neck.*": 0.5}``; a
  group joins the first pattern matching a module whose own units it removes (see `allocate.base.module_matches`);
- a tuple of group tags (``by=("scale",)``, ``("signature",)``, ``("scale", "signature")``, ``("kind",)``): the
  scope key is the tag values joined by ``"|"``, e.g. ``ratios={"8": 0.2, "16": 0.5}`` or ``{"8|c3k": 0.3}``.

Groups no pattern matches (or lacking a tag) share the ``"default"`` scope. Every scope is ranked on its own; a
scope without an entry in `ratios` uses `default_ratio` (None: the budget's ratio). With
``relative=True`` the ratios are multipliers of the budget ratio (clipped below 1), so a budget search can scale them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from ..errors import ConfigError
from ..graph.types import Allocation, ChannelGroup, Scores
from ..importance.base import NORMALIZERS
from .base import Allocator, AllocatorConfig, module_matches, rank_remove

DEFAULT_SCOPE = "default"
_MAX_RATIO = 0.999


@dataclass
class ScopedConfig(AllocatorConfig):
    """Scopes and their ratios (see the module docstring), plus the ranking options of `GlobalRankConfig`."""

    by: Tuple[str, ...] = ("pattern",)
    ratios: Dict[str, float] = field(default_factory=dict)
    default_ratio: Optional[float] = None
    relative: bool = False
    normalizer: str = "mean"
    per_unit: bool = True

    def __post_init__(self):
        super().__post_init__()
        self.by = (self.by,) if isinstance(self.by, str) else tuple(self.by)
        if not self.by or ("pattern" in self.by and len(self.by) > 1):
            raise ConfigError(f"scoped allocator: 'by' is ('pattern',) or a tuple of tag names, got {self.by}")
        if self.normalizer not in NORMALIZERS:
            raise ConfigError(f"scoped allocator: normalizer must be one of {NORMALIZERS}, got {self.normalizer!r}")
        limit = float("inf") if self.relative else 1.0
        checks = list(self.ratios.items()) + [("default_ratio", self.default_ratio or 0.0)]
        for key, value in checks:
            if not 0.0 <= float(value) < limit:
                raise ConfigError(f"scoped allocator: ratio of scope '{key}' must lie in [0, {limit}), got {value}")


class Scoped(Allocator):
    """A separate ranking (`rank_remove`) inside each scope, with the scope's ratio."""

    Config = ScopedConfig

    def scope_of(self, group: ChannelGroup) -> str:
        """The scope key of a group (``"default"`` when no named scope takes it)."""
        if self.config.by == ("pattern",):
            for pattern in self.config.ratios:
                if module_matches(group, [pattern]):
                    return pattern
            return DEFAULT_SCOPE
        if any(tag not in group.tags for tag in self.config.by):
            return DEFAULT_SCOPE
        return "|".join(str(group.tags[tag]) for tag in self.config.by)

    def scopes(self, groups: List[ChannelGroup]) -> Dict[str, List[ChannelGroup]]:
        """Scope key -> its groups, in first-seen order."""
        out: Dict[str, List[ChannelGroup]] = {}
        for group in groups:
            out.setdefault(self.scope_of(group), []).append(group)
        return out

    def scope_ratio(self, scope: str, budget_ratio: float) -> float:
        """The removal ratio of one scope (named ratio, else `default_ratio`, else the budget ratio)."""
        if scope in self.config.ratios:
            value = float(self.config.ratios[scope])
            return min(value * budget_ratio, _MAX_RATIO) if self.config.relative else value
        if self.config.default_ratio is not None:
            value = float(self.config.default_ratio)
            return min(value * budget_ratio, _MAX_RATIO) if self.config.relative else value
        return budget_ratio

    def propose(self, groups: List[ChannelGroup], scores: Optional[Scores], ratio: float) -> Allocation:
        if scores is None:
            raise ConfigError("scoped allocator: needs scores (run a criterion first)")
        caps = self.caps(groups)
        out: Allocation = {}
        for scope, members in self.scopes(groups).items():
            out.update(rank_remove(members, scores, self.scope_ratio(scope, ratio), caps, self.config.normalizer,
                                   self.config.per_unit))
        return out

