"""The criterion contract and the helpers every criterion shares.

A criterion turns channel groups into `Scores` (group id -> [size] tensor, higher = keep). It reads tensors through
the group members (module name, param name, dim, index_map) and calibration data from a `Stats` object produced by
`prunekit.importance.collector.collect`; it never registers hooks and never branches on layer types: what a member
is comes from its `role`, its `param` name and the tensors themselves.

Config fields shared by every criterion (`CriterionConfig`):

- ``reduction``: how per-member scores [size] combine into the group score: ``sum`` | ``mean`` | ``max``.
- ``normalizer``: applied to each group's [size] vector: ``none`` | ``mean`` | ``max`` | ``sum`` |
  ``standardization`` (z-score) | ``minmax`` | ``lamp`` (Lee et al. 2021, layer-adaptive magnitude).
- ``roles``: member roles that contribute (empty = every role).
- ``bias``: whether members whose param is named ``bias`` contribute (Torch-Pruning's default is no).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple

import torch

from ..errors import ConfigError
from ..graph.types import ChannelGroup, GroupMember, Scores

REDUCTIONS = ("sum", "mean", "max")
NORMALIZERS = ("none", "mean", "max", "sum", "standardization", "minmax", "lamp")
REQUIREMENTS = frozenset({"grads", "activations", "fisher"})
_EPS = 1e-12


@dataclass
class CriterionConfig:
    """Options shared by every criterion (see the module docstring)."""

    reduction: str = "sum"
    normalizer: str = "none"
    roles: Tuple[str, ...] = ()
    bias: bool = False

    def __post_init__(self):
        if self.reduction not in REDUCTIONS:
            raise ConfigError(f"criterion reduction must be one of {REDUCTIONS}, got {self.reduction!r}")
        if self.normalizer not in NORMALIZERS:
            raise ConfigError(f"criterion normalizer must be one of {NORMALIZERS}, got {self.normalizer!r}")
        self.roles = tuple(self.roles)


def build_config(cls: type, config: Any, overrides: Dict[str, Any]) -> Any:
    """An instance of the dataclass `cls` from `config` (None, a dict or a `cls`) plus keyword overrides."""
    if config is None:
        base: Dict[str, Any] = {}
    elif isinstance(config, cls):
        base = dataclasses.asdict(config)
    elif isinstance(config, dict):
        base = dict(config)
    else:
        raise ConfigError(f"{cls.__name__}: expected a {cls.__name__}, a dict or None, got {type(config).__name__}")
    base.update(overrides)
    base.pop("version", None)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(base) - known)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown options {unknown}; known options: {sorted(known)}")
    return cls(**base)


class Criterion:
    """Base class: scores every group; subclasses implement `score_group`.

    Attributes:
        requires: what the criterion needs from calibration (``"grads"``, ``"activations"``, ``"fisher"``).
        Config: the config dataclass (a subclass of `CriterionConfig`).
    """

    requires: FrozenSet[str] = frozenset()
    Config = CriterionConfig

    def __init__(self, config: Any = None, **overrides: Any):
        self.config = build_config(self.Config, config, overrides)

    def score(self, model: torch.nn.Module, groups: Sequence[ChannelGroup], stats: Any = None) -> Scores:
        """Score each group.

        Args:
            model: the model the groups were traced from.
            groups: the channel groups.
            stats: a `Stats` from the collector (needed when `requires` is not empty).

        Returns:
            {group id: float32 CPU tensor [group.size]}, normalised by `config.normalizer`. Groups the criterion
            has no signal for (e.g. BNScale on a group without BatchNorm) are left out; allocators leave them alone.
        """
        out = Scores(criterion=getattr(self, "name", type(self).__name__))
        with torch.no_grad():
            for group in groups:
                raw = self.score_group(model, group, stats)
                if raw is None:
                    continue
                raw = raw.detach().float().cpu().reshape(-1)
                if raw.numel() != group.size:
                    raise ConfigError(f"{type(self).__name__}: group {group.id} scored {raw.numel()} units, "
                                      f"expected {group.size}")
                out[group.id] = normalize(raw, self.config.normalizer)
        return out

    def score_group(self, model: torch.nn.Module, group: ChannelGroup, stats: Any) -> Optional[torch.Tensor]:
        """Raw [size] scores of one group, or None when the criterion has no signal for it."""
        raise NotImplementedError

    # helpers for subclasses -------------------------------------------------------------------------------------
    def members(self, model: torch.nn.Module, group: ChannelGroup, params_only: bool = True) -> List[GroupMember]:
        """The members that contribute under `config.roles` / `config.bias` (buffers dropped if `params_only`)."""
        chosen = []
        for member in group.members:
            if self.config.roles and member.role not in self.config.roles:
                continue
            if not self.config.bias and member.param == "bias":
                continue
            if params_only and not is_parameter(model, member):
                continue
            chosen.append(member)
        return chosen

    def reduce(self, per_member: List[torch.Tensor]) -> Optional[torch.Tensor]:
        """Combine per-member [size] vectors with `config.reduction` (None when there are none)."""
        return reduce_members(per_member, self.config.reduction)


def member_module(model: torch.nn.Module, member: GroupMember) -> torch.nn.Module:
    try:
        return model.get_submodule(member.module)
    except AttributeError:
        raise ConfigError(f"group member names module '{member.module}', which the model does not have") from None


def member_tensor(model: torch.nn.Module, member: GroupMember) -> torch.Tensor:
    """The parameter or buffer a member points at."""
    tensor = getattr(member_module(model, member), member.param, None)
    if not isinstance(tensor, torch.Tensor):
        raise ConfigError(f"group member {member.module}.{member.param}: module '{member.module}' has no tensor "
                          f"named '{member.param}'")
    return tensor


def is_parameter(model: torch.nn.Module, member: GroupMember) -> bool:
    """True when the member is an ``nn.Parameter`` (not a buffer such as BN running statistics)."""
    return isinstance(member_tensor(model, member), torch.nn.Parameter)


def gather(tensor: torch.Tensor, member: GroupMember) -> torch.Tensor:
    """The slice of `tensor` owned by each group channel, flattened.

    Args:
        tensor: any tensor shaped like the member's tensor (the weight itself, its gradient, its Fisher...).
        member: gives `dim` and `index_map` [size, k].

    Returns:
        [size, k * prod(other dims)]: row i holds every element that removing group channel i removes.
    """
    index_map = member.index_map.long().to(tensor.device)
    if index_map.dim() == 1:
        index_map = index_map[:, None]
    extent = tensor.shape[member.dim]
    if index_map.numel() and (int(index_map.max()) >= extent or int(index_map.min()) < 0):
        raise ConfigError(f"group member {member.module}.{member.param}: index_map reaches position "
                          f"{int(index_map.max())} but dim {member.dim} has {extent} positions")
    moved = tensor.detach().movedim(member.dim, 0)
    return moved[index_map.reshape(-1)].reshape(index_map.shape[0], -1)


def reduce_members(per_member: List[torch.Tensor], how: str) -> Optional[torch.Tensor]:
    """Combine [size] vectors from several members: ``sum`` | ``mean`` | ``max``; None for an empty list."""
    if not per_member:
        return None
    stacked = torch.stack([v.detach().float().cpu() for v in per_member])
    if how == "sum":
        return stacked.sum(0)
    if how == "mean":
        return stacked.mean(0)
    if how == "max":
        return stacked.max(0).values
    raise ConfigError(f"unknown reduction {how!r}; known: {REDUCTIONS}")


def normalize(scores: torch.Tensor, how: str) -> torch.Tensor:
    """Normalise one group's scores [size] so groups become comparable in a global ranking.

    ``mean`` / ``max`` / ``sum`` divide by that statistic; ``standardization`` is (s - mean) / std; ``minmax`` maps
    to [0, 1]; ``lamp`` divides each score by the sum of all scores not smaller than it (LAMP, Lee et al. 2021).
    """
    s = scores.float()
    if how == "none":
        return s
    if how == "mean":
        return s / (s.mean().abs() + _EPS)
    if how == "max":
        return s / (s.abs().max() + _EPS)
    if how == "sum":
        return s / (s.sum().abs() + _EPS)
    if how == "standardization":
        return (s - s.mean()) / (s.std(unbiased=False) + _EPS) if s.numel() > 1 else torch.zeros_like(s)
    if how == "minmax":
        return (s - s.min()) / (s.max() - s.min() + _EPS)
    if how == "lamp":
        order = torch.argsort(s, stable=True)
        ascending = s[order]
        tail_sums = torch.flip(torch.cumsum(torch.flip(ascending, [0]), 0), [0])
        out = torch.empty_like(s)
        out[order] = ascending / (tail_sums + _EPS)
        return out
    raise ConfigError(f"unknown normalizer {how!r}; known: {NORMALIZERS}")


def stats_entry(stats: Any, field: str, member: GroupMember) -> Optional[torch.Tensor]:
    """``stats.<field>[module][param]`` for a member, or None when absent."""
    table = getattr(stats, field, None) if stats is not None else None
    if not table:
        return None
    return table.get(member.module, {}).get(member.param)


def check_requirements(requires: Iterable[str]) -> FrozenSet[str]:
    req = frozenset(requires)
    unknown = sorted(req - REQUIREMENTS)
    if unknown:
        raise ConfigError(f"unknown calibration requirements {unknown}; known: {sorted(REQUIREMENTS)}")
    return req


def create(name: str, config: Any = None, **overrides: Any) -> Criterion:
    """Build a registered criterion by name (unknown names raise `UnknownNameError` listing the known ones)."""
    from . import CRITERIA

    criterion = CRITERIA.get(name)(config, **overrides)
    criterion.name = name
    return criterion
