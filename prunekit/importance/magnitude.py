"""Magnitude criteria: the Lp norm of every slice a group channel owns, aggregated over the group's members.

Group-level magnitude as in DepGraph (Fang et al., CVPR 2023, "DepGraph: Towards Any Structural Pruning"): a
channel's score combines the weights it removes in every coupled layer, not only in the producing filter (Li et al.
2017, "Pruning Filters for Efficient ConvNets", scores the filter alone: use ``roles=("out",)`` for that).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..errors import ConfigError
from ..graph.types import ChannelGroup
from .base import Criterion, CriterionConfig, gather, member_tensor


@dataclass
class MagnitudeConfig(CriterionConfig):
    """Adds ``p``: score = (reduce over members of sum |w|^p) ** (1/p)."""

    p: float = 2.0

    def __post_init__(self):
        super().__post_init__()
        if self.p <= 0:
            raise ConfigError(f"magnitude criterion: p must be positive, got {self.p}")


class Magnitude(Criterion):
    """(reduce_m sum_{w in slice_m(i)} |w|^p)^(1/p) per group channel i; parameters only (buffers skipped)."""

    Config = MagnitudeConfig

    def score_group(self, model: torch.nn.Module, group: ChannelGroup, stats: Any) -> Optional[torch.Tensor]:
        p = self.config.p
        per_member = [gather(member_tensor(model, m), m).float().abs().pow(p).sum(1)
                      for m in self.members(model, group)]
        total = self.reduce(per_member)
        return None if total is None else total.pow(1.0 / p)


class _FixedP(Magnitude):
    P = 2.0

    def __init__(self, config: Any = None, **overrides: Any):
        super().__init__(config, **overrides)
        if "p" in overrides and overrides["p"] != self.P:
            raise ConfigError(f"{type(self).__name__} has p = {self.P}; use prunekit.importance.magnitude.Magnitude for another p")
        self.config.p = self.P


class L1(_FixedP):
    """L1 magnitude: sum of |w| over every member slice (DepGraph group norm with p = 1)."""

    P = 1.0


class L2(_FixedP):
    """L2 magnitude: sqrt of the sum of w^2 over every member slice (DepGraph group norm with p = 2)."""

    P = 2.0
