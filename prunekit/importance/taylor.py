"""First-order Taylor criterion: |w * dL/dw| summed over every slice a group channel owns.

Molchanov et al., CVPR 2019, "Importance Estimation for Neural Network Pruning" (the weight-based variant); as a
group criterion in DepGraph (Fang et al., CVPR 2023). Gradients come from the calibration collector
(`requires = {"grads"}`: the mean gradient over the calibration batches); when a `Stats` has no gradient for a
parameter, the parameter's current ``.grad`` is used (so a caller may run ``loss.backward()`` itself).
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from ..errors import ConfigError
from ..graph.types import ChannelGroup, GroupMember
from .base import Criterion, gather, member_tensor, stats_entry


def gradient_of(model: torch.nn.Module, member: GroupMember, stats: Any, field: str = "grads") -> Optional[torch.Tensor]:
    """The member's gradient from ``stats.<field>``, else the parameter's ``.grad`` (only for ``grads``)."""
    found = stats_entry(stats, field, member)
    if found is None and field == "grads":
        found = getattr(member_tensor(model, member), "grad", None)
    return found


class Taylor(Criterion):
    """sum_{w in slice(i)} |w * g| per group channel i, reduced over the members that have gradients."""

    requires = frozenset({"grads"})
    field = "grads"

    def score_group(self, model: torch.nn.Module, group: ChannelGroup, stats: Any) -> Optional[torch.Tensor]:
        per_member = []
        members = self.members(model, group)
        for member in members:
            grad = gradient_of(model, member, stats, self.field)
            if grad is None:
                continue
            weight = member_tensor(model, member)
            per_member.append(self.channel_saliency(gather(weight, member).float(), gather(grad, member).float()))
        if members and not per_member:
            names = ", ".join(sorted({f"{m.module}.{m.param}" for m in members})[:4])
            raise ConfigError(f"{type(self).__name__}: group {group.id} has no '{self.field}' for {names}; "
                              f"run prunekit.importance.collector.collect(..., requires={set(self.requires)}, "
                              f"loss_fn=...) first")
        return self.reduce(per_member)

    @staticmethod
    def channel_saliency(weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """[size, n] weights and gradients -> [size] saliency."""
        return (weight * grad).abs().sum(1)
