"""Cost-aware global ranking: remove the units whose importance per unit of cost saved is lowest.

The greedy solution of the latency-constrained knapsack of HALP (Shen et al., "Structural Pruning via
Latency-Saliency Knapsack", NeurIPS 2022): each group's normalised scores are divided by what removing one of its
units saves under the budget's cost model (parameters, MACs, or the measured latency of
`prunekit.planning.latency`), then one global ranking removes ``ratio`` of all units. A channel of a layer that is
slow for its MACs (memory-bound, high resolution, off the kernel's channel block) is cheap to keep in importance and
expensive in time, so it goes first. With a ratio budget (no cost model) it is `GlobalRank`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from ..errors import ConfigError
from ..graph.types import Allocation, ChannelGroup, Scores
from ..importance.base import normalize
from .base import rank_remove
from .global_rank import GlobalRank, GlobalRankConfig


@dataclass
class CostRankConfig(GlobalRankConfig):
    """Adds ``step_fraction``: the marginal cost of a group is measured by removing this fraction of its units.

    ``max_ratio`` defaults to 0.75 here (every group keeps a quarter of its units): where fixed per-operation
    overheads dominate (batch 1 on a CPU), a latency target is otherwise met by collapsing the groups whose units
    save the most time (a residual stream shared by a whole stage) to one channel, a model that is fast and useless.
    Pass ``max_ratio=1`` to allow it; a target unreachable under the cap is refused with the cost it reached.
    """

    max_ratio: Optional[float] = 0.75
    step_fraction: float = 0.25

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 < self.step_fraction < 1.0:
            raise ConfigError(f"cost_rank allocator: step_fraction must lie in (0, 1), got {self.step_fraction}")


class CostRank(GlobalRank):
    """`GlobalRank` over normalised score / (cost saved per unit, relative to the mean over groups)."""

    Config = CostRankConfig

    def __init__(self, config: Any = None, **overrides: Any):
        super().__init__(config, **overrides)
        self.unit_cost: Dict[str, float] = {}

    def prepare(self, groups: Sequence[ChannelGroup], scores: Optional[Scores], cost: Any) -> None:
        """Cost saved per removed unit of each prunable group: (cost({}) - cost({g: k})) / k, k = step_fraction
        of the group (at least 1)."""
        self.unit_cost = {}
        if cost is None:
            return
        base = float(cost({}))
        for g in groups:
            if not g.prunable or g.size <= 1 or (scores is not None and g.id not in scores):
                continue
            k = max(1, min(g.size - 1, int(round(self.config.step_fraction * g.size))))
            self.unit_cost[g.id] = max(base - float(cost({g.id: k})), 0.0) / k

    def propose(self, groups: List[ChannelGroup], scores: Optional[Scores], ratio: float) -> Allocation:
        if scores is None:
            raise ConfigError("cost_rank allocator: needs scores (run a criterion first)")
        if not self.unit_cost:
            return super().propose(groups, scores, ratio)
        positive = [v for v in self.unit_cost.values() if v > 0]
        mean = sum(positive) / len(positive) if positive else 1.0
        weighted = {}
        for g in groups:
            saving = self.unit_cost.get(g.id, mean) / mean
            # a group whose removal saves nothing is ranked last (its units cost importance and buy nothing)
            normalizer = "none" if getattr(scores, "across_groups", False) else self.config.normalizer
            weighted[g.id] = normalize(scores[g.id].float(), normalizer) / max(saving, 1e-3)
        return rank_remove(groups, weighted, ratio, self.caps(groups), "none", self.config.per_unit)
