"""Spatial attention transfer, as paper 1 (GCP) distils its pruned YOLOv4 (Zagoruyko & Komodakis' AT).

Attention map of a feature map F [B, C, H, W]: ``a(F) = L2-normalise(mean_c(F^2) flattened to [B, H*W])``.
Loss: ``sum_l beta_l * mean((a(F_T,l) - a(F_S,l))^2)``. Channel counts may differ (the map averages them away);
spatial sizes must match. GCP's betas are large (1e3 to 1e6) because the maps' entries are tiny.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError

Features = Union[torch.Tensor, Sequence[torch.Tensor]]


@dataclass
class AttentionConfig:
    """Attributes: betas: weight per layer pair, in order (one value is used for every layer)."""

    betas: Tuple[float, ...] = (1.0,)

    def __post_init__(self):
        self.betas = tuple(float(b) for b in (self.betas if isinstance(self.betas, (list, tuple)) else [self.betas]))
        if not self.betas or any(b < 0 for b in self.betas):
            raise ConfigError(f"AttentionConfig: betas must be non-empty and >= 0, got {self.betas}")


def attention_map(feature: torch.Tensor) -> torch.Tensor:
    """[B, C, *spatial] -> [B, prod(spatial)]: channel-mean of squares, L2-normalised per sample."""
    return F.normalize(feature.float().pow(2).mean(dim=1).flatten(1), p=2, dim=1)


def _as_list(x: Features) -> list:
    return [x] if isinstance(x, torch.Tensor) else list(x)


class AttentionTransfer(nn.Module):
    """AT loss over paired layers.

    Args:
        cfg: settings; None uses `AttentionConfig()`.
    """

    kind = "features"
    needs_equal_channels = False

    Config = AttentionConfig  # the options a config names (distillation configs check them by this)

    def __init__(self, cfg: Optional[AttentionConfig] = None, **kwargs):
        super().__init__()
        self.cfg = cfg or AttentionConfig(**kwargs)

    def forward(self, student: Features, teacher: Features, names: Optional[Sequence[str]] = None) -> torch.Tensor:
        """Args: student / teacher: feature maps [B, C, H, W] (or lists of them, paired in order); names: layer
        names for error messages."""
        s_list, t_list = _as_list(student), _as_list(teacher)
        names = list(names) if names is not None else [f"layer {i}" for i in range(len(s_list))]
        if len(s_list) != len(t_list):
            raise ConfigError(f"attention: {len(s_list)} student vs {len(t_list)} teacher feature maps")
        betas = self.cfg.betas if len(self.cfg.betas) > 1 else self.cfg.betas * len(s_list)
        if len(betas) != len(s_list):
            raise ConfigError(f"attention: {len(betas)} betas for {len(s_list)} layers ({names})")
        total = s_list[0].new_zeros((), dtype=torch.float32)
        for s, t, beta, name in zip(s_list, t_list, betas, names):
            if s.dim() < 3 or s.shape[0] != t.shape[0] or s.shape[2:] != t.shape[2:]:
                raise ConfigError(
                    f"attention: layer {name!r}: student {tuple(s.shape)} and teacher {tuple(t.shape)} need equal "
                    f"batch and spatial size (H, W)"
                )
            total = total + beta * (attention_map(t.detach()) - attention_map(s)).pow(2).mean()
        return total
