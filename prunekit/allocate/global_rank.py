"""Global ranking: one threshold over the normalised scores of every eligible group.

Network Slimming's global |gamma| threshold (Liu et al. 2017) and Torch-Pruning's ``global_pruning=True``: the
ratio applies to the total number of units, and layers lose more or fewer units depending on their scores.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from ..errors import ConfigError
from ..graph.types import Allocation, ChannelGroup, Scores
from ..importance.base import NORMALIZERS
from .base import Allocator, AllocatorConfig, rank_remove


@dataclass
class GlobalRankConfig(AllocatorConfig):
    """Adds ``normalizer`` (per-group score normalisation before ranking) and ``per_unit`` (channels and heads
    ranked separately)."""

    normalizer: str = "mean"
    per_unit: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.normalizer not in NORMALIZERS:
            raise ConfigError(f"global allocator: normalizer must be one of {NORMALIZERS}, got {self.normalizer!r}")


class GlobalRank(Allocator):
    """Removes the globally lowest normalised units, ratio * total, skipping units of groups at their caps."""

    Config = GlobalRankConfig

    def propose(self, groups: List[ChannelGroup], scores: Optional[Scores], ratio: float) -> Allocation:
        if scores is None:
            raise ConfigError("global allocator: needs scores (run a criterion first)")
        return rank_remove(groups, scores, ratio, self.caps(groups), self.config.normalizer, self.config.per_unit)
