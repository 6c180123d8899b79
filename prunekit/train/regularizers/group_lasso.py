"""Group lasso over `ChannelGroup` channels, so coupled channels (residual adds, concat, BN) shrink together.

For a group g of size n, channel i owns the slices ``member.index_map[i]`` of every member tensor (along
``member.dim``). Its norm is ``r_i = sqrt(sum_members ||w_member[slice_i]||^2)`` and the penalty is
``lam * sum_g sum_i r_i``. After ``backward()`` the hook adds the (sub)gradient ``lam * w / r_i`` to every owned
position (0 where ``r_i = 0``, the minimum-norm subgradient), so a channel whose producer conv, BatchNorm and
consumer slices are all small is pulled to zero as one unit.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ...errors import ConfigError
from ...graph.types import ChannelGroup, GroupMember
from .schedules import make_schedule


@dataclass
class GroupLassoConfig:
    """Settings of `GroupLasso`.

    Attributes:
        lam: base penalty weight.
        schedule: a scalar schedule name (``constant``, ``linear_decay``, ``cosine_decay``).
        schedule_args: its extra options.
        unit: ``"epoch"`` | ``"step"``: the schedule's clock.
        roles: only members with these roles (e.g. ``("out", "norm")``); None = every member.
        total: run length in `unit`s; None takes it from the loop.
    """

    lam: float = 1e-4
    schedule: str = "constant"
    schedule_args: Dict[str, float] = field(default_factory=dict)
    unit: str = "epoch"
    roles: Optional[Tuple[str, ...]] = None
    total: Optional[int] = None

    def __post_init__(self):
        if self.lam < 0:
            raise ConfigError(f"GroupLassoConfig: lam must be >= 0, got {self.lam}")
        if self.unit not in ("epoch", "step"):
            raise ConfigError(f"GroupLassoConfig: unit must be 'epoch' or 'step', got {self.unit!r}")
        if self.schedule == "gcp_variable":
            raise ConfigError("GroupLassoConfig: gcp_variable is per BatchNorm channel; use a scalar schedule")
        make_schedule(self.schedule, self.lam, **self.schedule_args)


def _member_param(model: nn.Module, group: ChannelGroup, member: GroupMember) -> Optional[nn.Parameter]:
    try:
        module = model.get_submodule(member.module)
    except AttributeError:
        raise ConfigError(f"group_lasso: group {group.id!r} names module {member.module!r}, "
                          f"which {type(model).__name__} does not have") from None
    tensor = getattr(module, member.param, None)
    if tensor is None:
        raise ConfigError(f"group_lasso: module {member.module!r} has no tensor {member.param!r} (group {group.id!r})")
    return tensor if isinstance(tensor, nn.Parameter) else None  # buffers (running stats) are not regularised


def _slices(tensor: torch.Tensor, member: GroupMember) -> Tuple[torch.Tensor, torch.Tensor]:
    """(flat positions [n*k], owned values [n, k * rest]) of one member."""
    index = member.index_map.to(tensor.device).long()
    flat = index.reshape(-1)
    values = tensor.movedim(member.dim, 0)[flat].reshape(index.shape[0], -1)
    return flat, values


class GroupLasso:
    """Group-lasso hook (``after_backward``) over explicit channel groups.

    Args:
        groups: the channel groups (see `prunekit.graph.types.ChannelGroup`); non-prunable ones are skipped.
        cfg: settings; None uses `GroupLassoConfig()`.
    """

    def __init__(self, groups: Sequence[ChannelGroup], cfg: Optional[GroupLassoConfig] = None):
        self.cfg = cfg or GroupLassoConfig()
        self.groups = [g for g in groups if g.prunable]
        if not self.groups:
            raise ConfigError("group_lasso: no prunable channel group given")
        self.schedule = make_schedule(self.cfg.schedule, self.cfg.lam, **self.cfg.schedule_args)
        self.total: Optional[int] = self.cfg.total

    def on_train_start(self, model: nn.Module, info) -> None:
        if self.cfg.total is None:
            self.total = info.epochs if self.cfg.unit == "epoch" else info.total_steps
        self.norms(model)  # fail early on names that do not resolve

    def _members(self, model: nn.Module, group: ChannelGroup) -> List[Tuple[GroupMember, nn.Parameter]]:
        out = []
        for m in group.members:
            if self.cfg.roles is not None and m.role not in self.cfg.roles:
                continue
            param = _member_param(model, group, m)
            if param is not None:
                out.append((m, param))
        return out

    def norms(self, model: nn.Module) -> Dict[str, torch.Tensor]:
        """Group id -> channel norms r [size] (differentiable)."""
        result = {}
        for g in self.groups:
            sq = None
            for member, param in self._members(model, g):
                part = _slices(param, member)[1].pow(2).sum(dim=1)
                sq = part if sq is None else sq + part
            if sq is not None:
                result[g.id] = sq.sqrt()
        return result

    def penalty(self, model: nn.Module, lam: Optional[float] = None) -> torch.Tensor:
        """``lam * sum_g sum_i r_{g,i}`` as a differentiable scalar (for logging or autograd checks)."""
        lam = self.cfg.lam if lam is None else lam
        norms = list(self.norms(model).values())
        return lam * torch.stack([n.sum() for n in norms]).sum()

    def current_lam(self, step: int, epoch: int) -> float:
        if self.total is None:
            raise ConfigError("group_lasso: run length unknown; set GroupLassoConfig.total or train with the loop")
        return float(self.schedule.rate(epoch if self.cfg.unit == "epoch" else step, self.total))

    @torch.no_grad()
    def after_backward(self, model: nn.Module, step: int, epoch: int) -> None:
        lam = self.current_lam(step, epoch)
        for g in self.groups:
            members = [(m, p) for m, p in self._members(model, g) if p.requires_grad]
            if not members:
                continue
            norm = sum(_slices(p, m)[1].pow(2).sum(dim=1) for m, p in members).sqrt()  # [size]
            coef = torch.where(norm > 0, lam / norm.clamp_min(torch.finfo(norm.dtype).tiny), torch.zeros_like(norm))
            for member, param in members:
                flat, values = _slices(param, member)
                delta = (values * coef[:, None]).reshape(flat.numel(), *param.movedim(member.dim, 0).shape[1:])
                if param.grad is None:
                    param.grad = torch.zeros_like(param)
                param.grad.movedim(member.dim, 0).index_add_(0, flat, delta)
