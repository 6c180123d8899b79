"""PDP: parameter-free differentiable pruning (Cho, Adya, Naik, NeurIPS 2023, arXiv 2305.11203).

Every target weight is used as ``W * m(W)`` with ``m(w) = sigmoid((w^2 - t^2) / tau)``: a soft mask computed from the
weights alone, at every forward (so the threshold t is recomputed after every optimizer step, as in the paper, not
once per epoch as in PQuant). Gradients flow through both factors, so a weight under the threshold still learns and
can come back ("recovery events"), and the mask's own derivative pushes weights near t to a decision.

- Unstructured: t is the midpoint between the largest pruned and the smallest kept |w| of the layer at its current
  target ``r_l(step) = ramp(step) * r_l``; r_l comes from one global magnitude sort at the end of warm-up.
- N:M: t is the midpoint between the N-th and (N+1)-th largest |w| of each group of M along the input dimension.
  The ramp blends the mask in: ``1 - ramp(step) * (1 - m)`` (an N:M pattern has no fractional sparsity).
- tau: ``temperature * mean(W^2)`` per layer and step (`masks.relative_temperature`): dimensionless, so one value
  fits layers of any weight scale (the paper's pitfall).
- Hardening keeps the largest |w| at the final target (equal to ``m >= 0.5`` at the end of the ramp, but exact in
  count), then fine-tuning may continue with the masks frozen.
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch
from torch import nn

from .base import ElementSparsifier
from .config import PDPConfig
from .masks import midpoint_threshold, prune_count, ramp, relative_temperature, soft_mask
from .targets import Target, from_groups, to_groups


class PDPSoftMask(nn.Module):
    """Parametrization ``w -> w * m(w)`` for one weight (unstructured or N:M).

    Attributes set by the sparsifier: ``k`` (weights pruned per row: the layer for unstructured, a group for N:M;
    0 = identity), ``blend`` (N:M ramp, 0..1), ``tau`` (dimensionless temperature), ``track`` (record statistics),
    ``count_recovery`` (count weights that climb back over the threshold).
    """

    def __init__(self, target: Target, kind: str, n: int, m: int, tau: float):
        super().__init__()
        self.shape, self.in_dim, self.kind, self.n, self.m, self.tau = target.shape, target.in_dim, kind, n, m, tau
        self.k, self.blend = 0, 0.0
        self.track = self.count_recovery = False
        self.stats: Dict[str, Any] = {}
        self._below = None
        self.recovered = 0

    def rows(self, w: torch.Tensor) -> torch.Tensor:
        return to_groups(w, self.in_dim, self.m) if self.kind == "nm" else w.reshape(1, -1)

    def unrows(self, x: torch.Tensor) -> torch.Tensor:
        return from_groups(x, self.shape, self.in_dim) if self.kind == "nm" else x.reshape(self.shape)

    def mask(self, w: torch.Tensor) -> torch.Tensor:
        """The soft mask [*shape] of `w` at the current target (ones when nothing is pruned yet)."""
        if self.k <= 0 or (self.kind == "nm" and self.blend <= 0):
            return torch.ones_like(w)
        rows = self.rows(w)
        t = midpoint_threshold(rows.abs(), self.k)
        m = soft_mask(rows, t, relative_temperature(rows, self.tau))
        if self.kind == "nm" and self.blend < 1:
            m = 1.0 - self.blend * (1.0 - m)
        return self.unrows(m)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        m = self.mask(w)
        if self.track and torch.is_grad_enabled():
            self._observe(m.detach())
        return w * m

    def _observe(self, m: torch.Tensor) -> None:
        below = m < 0.5
        if self.count_recovery and self._below is not None:
            self.recovered += int((self._below & ~below).sum())
        self._below = below
        self.stats = {"pruned": int(below.sum()), "undecided": int(((m > 0.01) & (m < 0.99)).sum()),
                      "numel": m.numel()}


class PDPSparsifier(ElementSparsifier):
    """PDP (Cho et al. 2023) as a training hook for unstructured and N:M sparsity. Config: `PDPConfig`.

    Use: ``train(model, data, cfg, hooks=[pdp])``, then ``masks = pdp.harden(model)`` (frozen masks for fine-tuning)
    and `prunekit.train.pdp.finish(model)`. ``pdp.history`` holds (step, sparsity, undecided share) rows and
    ``pdp.recovery_events`` the weights that crossed the threshold upwards after warm-up.
    """

    method = "pdp"

    def __init__(self, config: PDPConfig):
        super().__init__(config)
        self.history: List[List[float]] = []
        self.recovery_events = 0

    def make_param(self, t: Target) -> PDPSoftMask:
        cfg = self.config
        return PDPSoftMask(t, cfg.kind, cfg.n, cfg.m, cfg.temperature)

    def set_step(self, model: nn.Module, step: int) -> None:
        """Point every mask at the target of `step` (per-layer targets fixed at the end of warm-up)."""
        self.step = step
        cfg = self.config
        f = ramp(step, self.warmup_steps, self.ramp_steps)
        ratios = self.layer_ratios(model) if f > 0 else None
        track = step % cfg.track_every == 0
        for i, (t, p) in enumerate(zip(self.targets, self.params(model).values())):
            if cfg.kind == "nm":
                p.k, p.blend = (cfg.m - cfg.n if f > 0 else 0), f
            else:
                p.k = prune_count(t.numel, f * ratios[i]) if ratios is not None else 0
            p.track = track
            p.count_recovery = step > self.warmup_steps

    def record(self, model: nn.Module, step: int) -> None:
        if step % self.config.track_every:
            return
        stats = [p.stats for p in self.params(model).values() if p.stats]
        total = sum(t.numel for t in self.targets)
        pruned = sum(s["pruned"] for s in stats)
        undecided = sum(s["undecided"] for s in stats)
        self.recovery_events = sum(p.recovered for p in self.params(model).values())
        self.history.append([step, pruned / total, undecided / total])

    def progress_text(self) -> str:
        """``sparsity 42.0% undecided 3.1%`` for the loop's progress bar."""
        if not self.history:
            return ""
        _, sparsity, undecided = self.history[-1]
        return f"sparsity {sparsity:.1%} undecided {undecided:.1%}"

    def summary(self) -> Dict[str, Any]:
        """Recovery events and how fast the masks became binary (first step after the ramp with < 1% undecided)."""
        ramp_end = self.warmup_steps + self.ramp_steps
        binary_at = next((int(s) for s, _, u in self.history if s >= ramp_end and u < 0.01), None)
        last = self.history[-1] if self.history else [None, None, None]
        at_end = next((u for s, _, u in self.history if s >= ramp_end - 1), None)
        return {"recovery_events": int(self.recovery_events),
                "recovery_share": self.recovery_events / max(1, sum(t.numel for t in self.targets)),
                "warmup_steps": self.warmup_steps, "ramp_end_step": ramp_end,
                "binary_step": binary_at, "steps_to_binary": None if binary_at is None else binary_at - ramp_end,
                "undecided_at_ramp_end": at_end, "final_soft_sparsity": last[1], "final_undecided": last[2],
                "skipped": dict(self.skipped)}
