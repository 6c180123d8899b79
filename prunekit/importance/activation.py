"""Activation criterion: mean |activation| of each group channel at the group's producer outputs.

The data-driven magnitude criterion (e.g. Hu et al. 2016, "Network Trimming", which used the zero fraction; the mean
absolute activation is the variant in Torch-Pruning's ActivationImportance). Statistics come from the collector
(`requires = {"activations"}`, with the groups passed so the producers of ``"out"`` members are hooked).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

import torch

from ..errors import ConfigError
from ..graph.types import ChannelGroup
from .base import Criterion, CriterionConfig


@dataclass
class ActivationConfig(CriterionConfig):
    roles: Tuple[str, ...] = ("out",)


class Activation(Criterion):
    """sum over a channel's positions of mean |y| at each producer module, reduced over producers.

    Groups without producer members get no score.
    """

    requires = frozenset({"activations"})
    Config = ActivationConfig

    def score_group(self, model: torch.nn.Module, group: ChannelGroup, stats: Any) -> Optional[torch.Tensor]:
        table = getattr(stats, "activations", None) or {}
        per_module = {}
        for member in group.members:
            if member.role not in self.config.roles or member.module in per_module:
                continue
            means = table.get(member.module)
            if means is None:
                raise ConfigError(f"Activation: no activation statistics for module '{member.module}' (group "
                                  f"{group.id}); run prunekit.importance.collector.collect(model, batches, "
                                  f"{{'activations'}}, groups=groups) first")
            index_map = member.index_map.long().reshape(group.size, -1)
            if int(index_map.max()) >= means.numel():
                raise ConfigError(f"Activation: module '{member.module}' recorded {means.numel()} output channels "
                                  f"but group {group.id} indexes position {int(index_map.max())}")
            per_module[member.module] = means.float()[index_map].sum(1)
        return self.reduce(list(per_module.values()))
