"""Channel-wise distillation (Shu et al., ICCV 2021), the recovery loss of paper 3 (YOLOv8 compression).

Each channel's spatial map becomes a distribution ``phi(y)_{c,i} = softmax_i(y_{c,i} / tau)``; the loss is
``loss_weight * tau^2 / (N * C) * sum_{n,c} sum_i phi(T)_{c,i} * (log phi(T)_{c,i} - log phi(S)_{c,i})``, summed over
layer pairs. Student and teacher need equal C and spatial size: put a width adapter on the student (the `Distiller`
does this automatically). Defaults follow mmrazor's ChannelWiseDivergence (tau 1, loss_weight 1).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError

Features = Union[torch.Tensor, Sequence[torch.Tensor]]


@dataclass
class CWDConfig:
    """Attributes: tau: softmax temperature (> 0); loss_weight: overall factor."""

    tau: float = 1.0
    loss_weight: float = 1.0

    def __post_init__(self):
        if self.tau <= 0 or self.loss_weight < 0:
            raise ConfigError(f"CWDConfig: need tau > 0 and loss_weight >= 0, got {self.tau}, {self.loss_weight}")


class ChannelWiseDistillation(nn.Module):
    """CWD loss over paired layers.

    Args:
        cfg: settings; None uses `CWDConfig()`.
    """

    kind = "features"
    needs_equal_channels = True

    Config = CWDConfig  # the options a config names (distillation configs check them by this)

    def __init__(self, cfg: Optional[CWDConfig] = None, **kwargs):
        super().__init__()
        self.cfg = cfg or CWDConfig(**kwargs)

    def forward(self, student: Features, teacher: Features, names: Optional[Sequence[str]] = None) -> torch.Tensor:
        """Args: student / teacher: maps [N, C, *spatial] (or lists, paired in order); names: for error messages."""
        s_list = [student] if isinstance(student, torch.Tensor) else list(student)
        t_list = [teacher] if isinstance(teacher, torch.Tensor) else list(teacher)
        names = list(names) if names is not None else [f"layer {i}" for i in range(len(s_list))]
        if len(s_list) != len(t_list):
            raise ConfigError(f"cwd: {len(s_list)} student vs {len(t_list)} teacher feature maps")
        tau = self.cfg.tau
        total = s_list[0].new_zeros((), dtype=torch.float32)
        for s, t, name in zip(s_list, t_list, names):
            if s.dim() < 3 or s.shape != t.shape:
                raise ConfigError(
                    f"cwd: layer {name!r}: student {tuple(s.shape)} and teacher {tuple(t.shape)} must have equal "
                    f"[N, C, H, W] (use an adapter for C)"
                )
            n, c = s.shape[:2]
            log_s = F.log_softmax(s.float().reshape(n, c, -1) / tau, dim=-1)
            log_t = F.log_softmax(t.detach().float().reshape(n, c, -1) / tau, dim=-1)
            kl = (log_t.exp() * (log_t - log_s)).sum()
            total = total + kl * (tau ** 2) / (n * c)
        return self.cfg.loss_weight * total
