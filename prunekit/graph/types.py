"""The values that cross package boundaries: channel groups and their members.

A *group* is a set of tensor slices that must be removed together: removing group channel ``i`` removes, in every
member, the positions ``member.index_map[i]`` along ``member.dim`` of ``module.param``. Modules are named by their
qualified names, so groups serialise and never hold object references.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch


@dataclass
class GroupMember:
    """One tensor slice tied to a group.

    Attributes:
        module: qualified module name (``""`` is the root module).
        param: parameter or buffer name inside that module (``weight``, ``bias``, ``running_mean``...).
        dim: the tensor dimension that loses positions.
        index_map: long tensor [group_size, k]: the k positions of this tensor's `dim` that group channel i owns.
        role: ``"out"`` where the module produces the channels, ``"in"`` where it consumes them, ``"norm"`` etc.
    """

    module: str
    param: str
    dim: int
    index_map: torch.Tensor
    role: str = "out"

    def positions(self, channels: torch.Tensor) -> torch.Tensor:
        """Positions along `dim` owned by the given group channels (sorted, unique)."""
        return torch.unique(self.index_map[channels].reshape(-1))

    def key(self) -> Tuple[str, str, int]:
        return (self.module, self.param, self.dim)


@dataclass
class ChannelGroup:
    """The unit of scoring and removal.

    Attributes:
        id: a stable name, e.g. ``"layer1.0.conv1:out"``; plans refer to groups by it.
        size: number of removable units (channels, heads, GroupNorm groups).
        unit: ``"channel"`` | ``"head"`` | ``"block"``.
        members: every tensor slice that the removal touches.
        prunable: False when an operation the engine cannot handle touches the group.
        reasons: why the group is not prunable (operation and module named), or why it is inexact.
        exact: False when removal is structurally valid but not equal to masking (e.g. LayerNorm over the channels).
        min_keep: units that must stay (e.g. 1, or a GQA/rounding constraint).
        round_to: removal keeps a multiple of this many units.
        tags: free-form facts other stages use (``{"scale": 8, "signature": "...", "kind": "attention"}``).
    """

    id: str
    size: int
    members: List[GroupMember]
    unit: str = "channel"
    prunable: bool = True
    reasons: List[str] = field(default_factory=list)
    exact: bool = True
    min_keep: int = 1
    round_to: int = 1
    tags: Dict[str, object] = field(default_factory=dict)

    def members_with_role(self, role: str) -> List[GroupMember]:
        return [m for m in self.members if m.role == role]

    def describe(self) -> str:
        mods = sorted({m.module for m in self.members})
        head = ", ".join(mods[:4]) + (f" (+{len(mods) - 4} more)" if len(mods) > 4 else "")
        return f"{self.id}: {self.size} {self.unit}s over {head}"


Scores = Dict[str, torch.Tensor]  # group id -> [size] float tensor; higher means keep
Allocation = Dict[str, int]  # group id -> number of units to remove


@dataclass
class Budget:
    """What to remove: a ratio of units, or a target in parameters or MACs.

    Attributes:
        ratio: fraction of units to remove in (0, 1), used when `target` is None.
        target: ``"params"`` | ``"macs"``: search a ratio so the pruned model keeps `keep_fraction` of it.
        keep_fraction: with `target`, the fraction of params/MACs the pruned model should keep, in (0, 1).
        targets / ignore: module-name glob patterns; groups touching an ignored module are left alone.
    """

    ratio: float = 0.5
    target: Optional[str] = None
    keep_fraction: float = 0.5
    targets: Tuple[str, ...] = ()
    ignore: Tuple[str, ...] = ()

    def __post_init__(self):
        from ..errors import ConfigError

        if self.target is None and not 0.0 < self.ratio < 1.0:
            raise ConfigError(f"pruning ratio must lie in (0, 1), got {self.ratio}")
        if self.target is not None:
            if self.target not in ("params", "macs"):
                raise ConfigError(f"budget target must be 'params' or 'macs', got {self.target!r}")
            if not 0.0 < self.keep_fraction < 1.0:
                raise ConfigError(f"keep_fraction must lie in (0, 1), got {self.keep_fraction}")
