"""L1 sparsity on BatchNorm scaling factors, applied as a subgradient after ``backward()``.

Network slimming's rule as used by paper 1 (GCP, YOLOv4) and paper 3 (YOLOv8 compression): after the task loss's
backward pass, ``gamma.grad += rate * sign(gamma)`` for every selected BatchNorm, which is the subgradient of
``rate * sum |gamma|``. The rate comes from a schedule (`prunekit.train.regularizers.schedules`) and may be per
channel (GCP's variable rate). Paper 3's code also pulls the shifts: ``beta.grad += beta_rate * sign(beta)`` with a
constant ``beta_rate = 10 * s0``; set `beta_rate` to reproduce it (default 0: off).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from ...errors import ConfigError
from .schedules import Rate, make_schedule


@dataclass
class BNL1Config:
    """Settings of `BNL1`.

    Attributes:
        s: base rate (paper 1 code default 1e-3; paper 3 default 1e-4).
        schedule: ``constant`` | ``gcp_variable`` | ``linear_decay`` | ``cosine_decay``.
        schedule_args: extra options of the schedule (e.g. ``{"relax_after": 0.4, "percentile": 0.65}``).
        unit: the schedule's clock: ``"epoch"`` (as both papers) or ``"step"``.
        include: glob patterns over qualified module names; a BatchNorm is regularised if one matches.
        exclude: glob patterns removing BatchNorms (e.g. residual-coupled ones, the detection head).
        beta_rate: constant L1 rate on the BatchNorm shifts (0 = off; paper 3's code uses ``10 * s``).
        total: length of the run in `unit`s; None takes it from the loop (``on_train_start``).
    """

    s: float = 1e-3
    schedule: str = "constant"
    schedule_args: Dict[str, float] = field(default_factory=dict)
    unit: str = "epoch"
    include: Tuple[str, ...] = ("*",)
    exclude: Tuple[str, ...] = ()
    beta_rate: float = 0.0
    total: Optional[int] = None

    def __post_init__(self):
        if self.s < 0 or self.beta_rate < 0:
            raise ConfigError(f"BNL1Config: rates must be >= 0, got s={self.s}, beta_rate={self.beta_rate}")
        if self.unit not in ("epoch", "step"):
            raise ConfigError(f"BNL1Config: unit must be 'epoch' or 'step', got {self.unit!r}")
        if self.total is not None and self.total <= 0:
            raise ConfigError(f"BNL1Config: total must be > 0, got {self.total}")
        self.include, self.exclude = tuple(self.include), tuple(self.exclude)
        make_schedule(self.schedule, self.s, **self.schedule_args)  # validates name and options


def select_batchnorms(model: nn.Module, include=("*",), exclude=()) -> List[Tuple[str, nn.Module]]:
    """Affine BatchNorm layers whose qualified names match `include` and none of `exclude`, in model order."""
    picked = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.modules.batchnorm._BatchNorm) or module.weight is None:
            continue
        included = any(fnmatch.fnmatchcase(name, p) for p in include)
        if included and not any(fnmatch.fnmatchcase(name, p) for p in exclude):
            picked.append((name, module))
    return picked


class BNL1:
    """BN-L1 sparsity hook (``after_backward``): ``gamma.grad += rate(t) * sign(gamma)``.

    Args:
        cfg: settings; None uses `BNL1Config()` (constant rate 1e-3 on every BatchNorm).
    """

    def __init__(self, cfg: Optional[BNL1Config] = None):
        self.cfg = cfg or BNL1Config()
        self.schedule = make_schedule(self.cfg.schedule, self.cfg.s, **self.cfg.schedule_args)
        self.total: Optional[int] = self.cfg.total

    def on_train_start(self, model: nn.Module, info) -> None:
        if self.cfg.total is None:
            self.total = info.epochs if self.cfg.unit == "epoch" else info.total_steps
        self.layers(model)  # fail early when nothing matches

    def layers(self, model: nn.Module) -> List[Tuple[str, nn.Module]]:
        picked = select_batchnorms(model, self.cfg.include, self.cfg.exclude)
        if not picked:
            raise ConfigError(
                f"bn_l1: no affine BatchNorm in {type(model).__name__} matches include={list(self.cfg.include)} "
                f"exclude={list(self.cfg.exclude)}"
            )
        return picked

    def rates(self, model: nn.Module, step: int, epoch: int) -> Dict[str, Rate]:
        """Rate per selected BatchNorm name (a float, or a tensor [C] for per-channel schedules)."""
        if self.total is None:
            raise ConfigError("bn_l1: run length unknown; set BNL1Config.total or train with the loop")
        layers = self.layers(model)
        gammas = torch.cat([bn.weight.detach().flatten() for _, bn in layers])
        t = epoch if self.cfg.unit == "epoch" else step
        rate = self.schedule.rate(t, self.total, gamma=gammas)
        if not isinstance(rate, torch.Tensor):
            return {name: float(rate) for name, _ in layers}
        out, offset = {}, 0
        for name, bn in layers:
            n = bn.weight.numel()
            out[name] = rate[offset:offset + n].view_as(bn.weight)
            offset += n
        return out

    def after_backward(self, model: nn.Module, step: int, epoch: int) -> None:
        modules = dict(self.layers(model))
        for name, rate in self.rates(model, step, epoch).items():
            bn = modules[name]
            _add_grad(bn.weight, rate * torch.sign(bn.weight.detach()))
            if self.cfg.beta_rate > 0 and bn.bias is not None:
                _add_grad(bn.bias, self.cfg.beta_rate * torch.sign(bn.bias.detach()))


def _add_grad(param: nn.Parameter, delta: torch.Tensor) -> None:
    if not param.requires_grad:
        return
    if param.grad is None:
        param.grad = delta.clone()
    else:
        param.grad.add_(delta)
