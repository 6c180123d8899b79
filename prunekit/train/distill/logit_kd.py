"""Logit knowledge distillation (Hinton et al. 2015), as used for recovery by TAS (alpha 0.9, T 4) and LPViT.

``KD = T^2 * KL(softmax(t / T) || softmax(s / T))`` with ``batchmean`` reduction over every prediction (logits
[..., K] are flattened to [N, K], so sequence models average over tokens).

Which formula: with ``include_ce=False`` (default, what the `Distiller` uses, since the training loop already adds
the task loss) the loss is the KD term alone, weighted by the distillation term's weight. With ``include_ce=True``
and targets it is the full ``(1 - alpha) * CE(s, y) + alpha * KD``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError


@dataclass
class LogitKDConfig:
    """Attributes: temperature T > 0; alpha in [0, 1] (used only with include_ce); include_ce."""

    temperature: float = 4.0
    alpha: float = 0.9
    include_ce: bool = False

    def __post_init__(self):
        if self.temperature <= 0 or not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"LogitKDConfig: need temperature > 0 and alpha in [0, 1], got "
                              f"{self.temperature}, {self.alpha}")


class LogitKD(nn.Module):
    """Logit KD loss.

    Args:
        cfg: settings; None uses `LogitKDConfig()`.
    """

    kind = "logits"
    needs_equal_channels = False

    Config = LogitKDConfig  # the options a config names (distillation configs check them by this)

    def __init__(self, cfg: Optional[LogitKDConfig] = None, **kwargs):
        super().__init__()
        self.cfg = cfg or LogitKDConfig(**kwargs)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor,
                targets: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Args: student, teacher: logits [..., K] of equal shape; targets: class ids [...] (for include_ce)."""
        if student.shape != teacher.shape:
            raise ConfigError(f"logit_kd: student logits {tuple(student.shape)} and teacher logits "
                              f"{tuple(teacher.shape)} differ in shape")
        t = self.cfg.temperature
        s_log = F.log_softmax(student.reshape(-1, student.shape[-1]).float() / t, dim=-1)
        t_log = F.log_softmax(teacher.detach().reshape(-1, teacher.shape[-1]).float() / t, dim=-1)
        kd = F.kl_div(s_log, t_log, reduction="batchmean", log_target=True) * t * t
        if not self.cfg.include_ce:
            return kd
        if targets is None:
            raise ConfigError("logit_kd: include_ce=True needs targets")
        ce = F.cross_entropy(student.reshape(-1, student.shape[-1]), targets.reshape(-1))
        return (1 - self.cfg.alpha) * ce + self.cfg.alpha * kd
