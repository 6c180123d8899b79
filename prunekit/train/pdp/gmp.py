"""Gradual magnitude pruning (Zhu and Gupta 2017, "To prune, or not to prune") on the same hooks as PDP.

Hard masks recomputed from |W * mask| every `update_every` steps while the sparsity follows the cubic schedule
``s(step) = s_f * (1 - (1 - (step - start) / length)^3)``; masked weights get no gradient. Per-layer targets come
from the same global magnitude sort at the start. N:M: the schedule's fraction of each layer's groups (those whose
pruned entries weigh least) is N:M-pruned. With ``ramp_epochs: 0`` and ``warmup_epochs: 0`` it is one-shot
magnitude pruning followed by fine-tuning with frozen masks.
"""
from __future__ import annotations

from typing import Dict

import torch
from torch import nn

from .artifact import FrozenMask
from .base import ElementSparsifier
from .config import GMPConfig
from .masks import cubic_update, hard_keep, prune_count
from .targets import Target, from_groups, to_groups


class GMPSparsifier(ElementSparsifier):
    """Gradual magnitude pruning (Zhu and Gupta 2017). Config: `GMPConfig`."""

    method = "gmp"

    def __init__(self, config: GMPConfig):
        super().__init__(config)
        self.fraction = 0.0

    def make_param(self, t: Target) -> FrozenMask:
        return FrozenMask(torch.ones(t.shape, dtype=torch.bool))

    def effective_weights(self, model: nn.Module) -> Dict[str, torch.Tensor]:
        return {t.name: p.original.detach() * p[0].mask
                for t, p in ((t, model.get_submodule(t.module).parametrizations[t.param]) for t in self.targets)}

    def set_step(self, model: nn.Module, step: int) -> None:
        self.step = step
        f = cubic_update(step, self.warmup_steps, self.ramp_steps, self.config.update_every)
        if f is not None:
            self.update(model, f)

    @torch.no_grad()
    def update(self, model: nn.Module, fraction: float) -> None:
        """Recompute every hard mask at `fraction` of the final target."""
        self.fraction = fraction
        cfg = self.config
        ratios = self.layer_ratios(model)
        weights = self.effective_weights(model)
        for t, r in zip(self.targets, ratios):
            mag = weights[t.name].abs()
            if cfg.kind == "nm":
                rows = to_groups(mag, t.in_dim, cfg.m)
                keep = hard_keep(rows, cfg.m - cfg.n)
                cost = (rows * ~keep).sum(-1)  # what N:M-pruning each group removes
                n_groups = int(round(fraction * rows.shape[0]))
                chosen = torch.zeros(rows.shape[0], dtype=torch.bool, device=rows.device)
                chosen[cost.argsort()[:n_groups]] = True
                keep = keep | ~chosen.unsqueeze(-1)
                keep = from_groups(keep, t.shape, t.in_dim)
            else:
                keep = hard_keep(mag.reshape(1, -1), prune_count(t.numel, fraction * r)).reshape(t.shape)
            param = model.get_submodule(t.module).parametrizations[t.param][0]
            param.mask.copy_(keep.to(param.mask.dtype))

    def progress_text(self) -> str:
        return f"sparsity {self.fraction * self.config.final_sparsity:.1%}"
