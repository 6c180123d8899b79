"""The values that cross package boundaries: channel groups and their members.

A *group* is a set of tensor slices that must be removed together: removing group channel ``i`` removes, in every
member, the positions ``member.index_map[i]`` along ``member.dim`` of ``module.param``. Modules are named by their
qualified names, so groups serialise and never hold object references.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

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

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready description (index maps as nested lists); `ChannelGroup.from_dict` reads it back."""
        return {"id": self.id, "size": self.size, "unit": self.unit, "prunable": self.prunable,
                "reasons": list(self.reasons), "exact": self.exact, "min_keep": self.min_keep,
                "round_to": self.round_to, "tags": {k: v for k, v in self.tags.items()
                                                    if isinstance(v, (str, int, float, bool, type(None)))},
                "members": [{"module": m.module, "param": m.param, "dim": m.dim, "role": m.role,
                             "index_map": m.index_map.tolist()} for m in self.members]}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "ChannelGroup":
        """The group `to_dict` described."""
        members = [GroupMember(m["module"], m["param"], int(m["dim"]),
                               torch.tensor(m["index_map"], dtype=torch.long).reshape(int(data["size"]), -1),
                               m.get("role", "out")) for m in data["members"]]
        return cls(id=data["id"], size=int(data["size"]), members=members, unit=data.get("unit", "channel"),
                   prunable=bool(data.get("prunable", True)), reasons=list(data.get("reasons", [])),
                   exact=bool(data.get("exact", True)), min_keep=int(data.get("min_keep", 1)),
                   round_to=int(data.get("round_to", 1)), tags=dict(data.get("tags", {})))


class Scores(Dict[str, torch.Tensor]):
    """Criterion output: group id -> float32 CPU tensor [group.size], higher means keep.

    A dict (so ``scores[gid]`` works everywhere) that knows which criterion made it. Groups the criterion has no
    signal for are absent, and allocators leave them alone.

    Attributes:
        criterion: the registered criterion name (or ``""`` when built by hand).
        across_groups: the values are already on one scale across groups (measured damage, not weights), so
            ranking allocators must not normalise each group before comparing them.
    """

    def __init__(self, values: Optional[Dict[str, torch.Tensor]] = None, criterion: str = "",
                 across_groups: bool = False):
        super().__init__(values or {})
        self.criterion = criterion
        self.across_groups = across_groups

    def check(self, groups: Sequence["ChannelGroup"]) -> "Scores":
        """Raise `ConfigError` unless every score names a known group and holds `size` finite values."""
        from ..errors import ConfigError

        sizes = {g.id: g.size for g in groups}
        for gid, value in self.items():
            if gid not in sizes:
                raise ConfigError(f"scores name unknown group '{gid}'")
            if value.numel() != sizes[gid] or not torch.isfinite(value.float()).all():
                raise ConfigError(f"scores of group '{gid}' must be {sizes[gid]} finite values")
        return self

    def to_dict(self) -> Dict[str, List[float]]:
        """JSON-ready {group id: [floats]}."""
        return {gid: [float(v) for v in value.reshape(-1).tolist()] for gid, value in self.items()}


class Allocation(Dict[str, int]):
    """Allocator output: group id -> number of units to remove (0 for groups left alone), constraints applied.

    A dict of ints with the facts a budget search adds (all None for a plain ratio).

    Attributes:
        ratio: the global ratio given to the policy.
        cost / target_cost / base_cost: the budget's cost of this allocation, its target and the unpruned cost.
    """

    def __init__(self, values: Optional[Dict[str, int]] = None, ratio: Optional[float] = None,
                 cost: Optional[float] = None, target_cost: Optional[float] = None,
                 base_cost: Optional[float] = None):
        super().__init__({k: int(v) for k, v in (values or {}).items()})
        self.ratio, self.cost, self.target_cost, self.base_cost = ratio, cost, target_cost, base_cost

    def removed_units(self) -> int:
        """Total units removed over all groups."""
        return int(sum(max(v, 0) for v in self.values()))

    def kept(self, groups: Sequence["ChannelGroup"]) -> Dict[str, int]:
        """{group id: units kept} for `groups`."""
        return {g.id: g.size - int(self.get(g.id, 0)) for g in groups}

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready counts plus the search facts."""
        return {"removed": dict(self), "ratio": self.ratio, "cost": self.cost, "target_cost": self.target_cost,
                "base_cost": self.base_cost}


@dataclass
class Budget:
    """What to remove: a ratio of units, or a target in parameters, MACs or measured latency.

    Attributes:
        ratio: fraction of units to remove in (0, 1), used when `target` is None.
        target: ``"params"`` | ``"macs"`` | ``"latency"``: search a ratio so the pruned model keeps `keep_fraction`
            of it (latency: as measured per layer on `runtime`, see `prunekit.planning.latency`).
        keep_fraction: with `target`, the fraction of params/MACs/latency the pruned model should keep, in (0, 1).
        targets / ignore: module-name glob patterns; groups touching an ignored module are left alone.
        runtime: with ``target="latency"``: ``eager`` | ``eager-bnfold`` | ``onnxruntime`` | ``cuda``.
    """

    ratio: float = 0.5
    target: Optional[str] = None
    keep_fraction: float = 0.5
    targets: Tuple[str, ...] = ()
    ignore: Tuple[str, ...] = ()
    runtime: str = "eager"

    TARGETS = ("params", "macs", "latency")
    RUNTIMES = ("eager", "eager-bnfold", "onnxruntime", "cuda")

    def __post_init__(self):
        from ..errors import ConfigError

        if self.target is None and not 0.0 < self.ratio < 1.0:
            raise ConfigError(f"budget.ratio must lie in (0, 1), got {self.ratio}")
        if self.target is not None:
            if self.target not in self.TARGETS:
                raise ConfigError(f"budget.target must be one of {self.TARGETS} (or null for a ratio), got "
                                  f"{self.target!r}")
            if not 0.0 < self.keep_fraction < 1.0:
                raise ConfigError(f"budget.keep_fraction must lie in (0, 1), got {self.keep_fraction}")
        if self.runtime not in self.RUNTIMES:
            raise ConfigError(f"budget.runtime must be one of {self.RUNTIMES}, got {self.runtime!r}")
        self.targets, self.ignore = tuple(self.targets), tuple(self.ignore)
