"""Uniform allocation: every eligible group loses the same fraction of its units (local, per-layer pruning).

The layer-wise baseline of Li et al. 2017 ("Pruning Filters for Efficient ConvNets") and the "uniform 50% per layer"
arm of the YOLOv8 compression paper. Scores are not needed to allocate (only to select).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional

from ..errors import ConfigError
from ..graph.types import Allocation, ChannelGroup, Scores
from .base import Allocator, AllocatorConfig


@dataclass
class UniformConfig(AllocatorConfig):
    """Adds ``rounding``: ``floor`` or ``round`` of ratio * size."""

    rounding: str = "floor"

    def __post_init__(self):
        super().__post_init__()
        if self.rounding not in ("floor", "round"):
            raise ConfigError(f"uniform allocator: rounding must be 'floor' or 'round', got {self.rounding!r}")


class Uniform(Allocator):
    """n_remove = floor(ratio * size) (or round) in every eligible group, then the shared constraints."""

    Config = UniformConfig
    refinable = False  # a budget search keeps every group at the same share (equal head counts per layer)

    def propose(self, groups: List[ChannelGroup], scores: Optional[Scores], ratio: float) -> Allocation:
        if self.config.rounding == "floor":
            return {g.id: int(math.floor(ratio * g.size + 1e-9)) for g in groups}
        return {g.id: int(math.floor(ratio * g.size + 0.5)) for g in groups}
