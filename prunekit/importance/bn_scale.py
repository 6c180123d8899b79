"""BatchNorm scale criterion: |gamma| of the BatchNorm members of a group.

Network Slimming (Liu et al., ICCV 2017, "Learning Efficient Convolutional Networks through Network Slimming"): after
L1 sparsity training on the BN scales, channels with small |gamma| contribute little and are removed. Used by GCP and
the YOLOv8 compression framework.

A member counts as a BatchNorm scale when its role is ``"norm"``, its param is ``"weight"`` and its module keeps a
``running_mean`` tensor (running statistics are what distinguish batch norm from layer/group norm affine params).
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from ..graph.types import ChannelGroup, GroupMember
from .base import Criterion, gather, member_module, member_tensor


def is_bn_scale(model: torch.nn.Module, member: GroupMember) -> bool:
    """True for the ``weight`` of a norm member whose module tracks running statistics."""
    if member.role != "norm" or member.param != "weight":
        return False
    return isinstance(getattr(member_module(model, member), "running_mean", None), torch.Tensor)


class BNScale(Criterion):
    """|gamma| summed over each channel's positions, reduced over the group's BatchNorm members.

    Groups without a BatchNorm member get no score (they are left out of `Scores`).
    """

    def score_group(self, model: torch.nn.Module, group: ChannelGroup, stats: Any) -> Optional[torch.Tensor]:
        per_member = [gather(member_tensor(model, m), m).float().abs().sum(1)
                      for m in group.members if is_bn_scale(model, m)]
        return self.reduce(per_member)
