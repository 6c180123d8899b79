"""Random scores: the baseline every criterion must beat (e.g. Li et al. 2022, "Revisiting Random Channel Pruning").

Scores are drawn per group from a generator seeded with ``seed`` and the group id, so they do not depend on the
order of the groups.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..graph.types import ChannelGroup
from .base import Criterion, CriterionConfig


@dataclass
class RandomConfig(CriterionConfig):
    seed: int = 0


class Random(Criterion):
    """Uniform [0, 1) scores, reproducible from (seed, group id)."""

    Config = RandomConfig

    def score_group(self, model: torch.nn.Module, group: ChannelGroup, stats: Any) -> Optional[torch.Tensor]:
        gen = torch.Generator().manual_seed(int(self.config.seed) * 1_000_003 + zlib.crc32(group.id.encode()))
        return torch.rand(group.size, generator=gen)
