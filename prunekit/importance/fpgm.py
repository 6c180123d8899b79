"""FPGM: filters close to the geometric median of their layer are redundant.

He et al., CVPR 2019, "Filter Pruning via Geometric Median for Deep Convolutional Neural Networks Acceleration".
The score of channel i is the sum of distances from its filter to every other filter of the same producer; a filter
that others can replace (near the median, or duplicated) gets a low score. The filter of a group channel is its slice
of each producer (role ``"out"``) weight; several producers are scored separately and reduced.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

import torch

from ..errors import ConfigError
from ..graph.types import ChannelGroup
from .base import Criterion, CriterionConfig, gather, is_parameter, member_tensor


@dataclass
class FPGMConfig(CriterionConfig):
    """Adds ``p``: the norm of the filter distance (2 = Euclidean)."""

    roles: Tuple[str, ...] = ("out",)
    p: float = 2.0

    def __post_init__(self):
        super().__post_init__()
        if self.p <= 0:
            raise ConfigError(f"fpgm criterion: p must be positive, got {self.p}")


class FPGM(Criterion):
    """sum_j ||f_i - f_j||_p over the group's producer filters; falls back to every member without producers."""

    Config = FPGMConfig

    def score_group(self, model: torch.nn.Module, group: ChannelGroup, stats: Any) -> Optional[torch.Tensor]:
        members = self.members(model, group) or [
            m for m in group.members if is_parameter(model, m) and (self.config.bias or m.param != "bias")]
        per_member = []
        for member in members:
            filters = gather(member_tensor(model, member), member).float()
            per_member.append(torch.cdist(filters[None], filters[None], p=self.config.p)[0].sum(1))
        return self.reduce(per_member)
