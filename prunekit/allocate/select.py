"""Selection: which units each group loses, given scores and an allocation (the lowest-scoring n)."""
from __future__ import annotations

from typing import Dict, Sequence

import torch

from ..errors import ConfigError
from ..graph.types import Allocation, ChannelGroup, Scores


def select(groups: Sequence[ChannelGroup], scores: Scores, allocation: Allocation) -> Dict[str, torch.Tensor]:
    """Indices to remove per group.

    Args:
        groups: the channel groups.
        scores: group id -> [size] (higher = keep).
        allocation: group id -> n_remove.

    Returns:
        {group id: sorted LongTensor [n]} of the n lowest-scoring units (ties: lower index first), for every group
        with n > 0.
    """
    by_id = {g.id: g for g in groups}
    removed: Dict[str, torch.Tensor] = {}
    for group_id, n in allocation.items():
        n = int(n)
        if n <= 0:
            continue
        group = by_id.get(group_id)
        if group is None:
            raise ConfigError(f"select: allocation names unknown group '{group_id}'")
        if n >= group.size:
            raise ConfigError(f"select: group {group_id} would lose all {group.size} units")
        if group_id not in scores:
            raise ConfigError(f"select: group {group_id} has an allocation but no scores")
        s = scores[group_id].detach().float().cpu().reshape(-1)
        if s.numel() != group.size or not torch.isfinite(s).all():
            raise ConfigError(f"select: scores of group {group_id} must be {group.size} finite values")
        lowest = torch.argsort(s, stable=True)[:n]
        removed[group_id] = torch.sort(lowest).values.long()
    return removed
