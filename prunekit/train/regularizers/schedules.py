"""Rate schedules for sparsity regularizers and distillation weights.

Each schedule is a small dataclass with ``rate(t, total, gamma=None)``: `t` is the current step or epoch (0-based,
the caller decides which), `total` the number of steps or epochs of the run. It returns a float, or a per-channel
tensor when the rate depends on the scaling factors `gamma` (the concatenation of every regularised |gamma|, shape
[N]).

- `Constant`: ``s`` (GCP's baseline, multi-GPU path of the official code).
- `GCPVariable`: paper 1 (GCP) as the official code does it: ``s`` for the first 40% of training; afterwards the
  channels whose |gamma| is at least the 65th-percentile value of all regularised |gamma| get ``0.01 * s``, the
  others keep ``s``. The percentile value is ``sorted(|gamma|)[floor(0.65 * N)]`` (the code's ``get_mask2``).
- `LinearDecay`: paper 3 (YOLOv8 compression): ``s(e) = s0 * (1 - 0.9 * e / E)``.
- `CosineDecay`: ``final + (s0 - final) * (1 + cos(pi * t / total)) / 2`` (e.g. a decaying distillation weight).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch

from ...errors import ConfigError

Rate = Union[float, torch.Tensor]


def _check_total(name: str, total: float) -> None:
    if total <= 0:
        raise ConfigError(f"schedule {name}: total must be > 0, got {total}")


@dataclass
class Constant:
    """The same rate throughout."""

    s: float = 1e-3

    def rate(self, t: float, total: float, gamma: Optional[torch.Tensor] = None) -> Rate:
        return float(self.s)


@dataclass
class GCPVariable:
    """GCP's variable sparsity rate (paper 1, official code ``--prune 1``).

    Attributes:
        s: base rate.
        relax_after: fraction of training after which important channels are relaxed (0.4).
        percentile: |gamma| at or above this quantile of all regularised |gamma| counts as important (0.65).
        relaxed_factor: important channels get ``relaxed_factor * s`` (0.01; the code subtracts ``0.99 * s``).
    """

    s: float = 1e-3
    relax_after: float = 0.4
    percentile: float = 0.65
    relaxed_factor: float = 0.01

    def __post_init__(self):
        if not 0.0 <= self.relax_after <= 1.0 or not 0.0 <= self.percentile < 1.0 or self.relaxed_factor < 0:
            raise ConfigError(
                f"gcp_variable: need relax_after in [0, 1], percentile in [0, 1), relaxed_factor >= 0; got "
                f"{self.relax_after}, {self.percentile}, {self.relaxed_factor}"
            )

    def important(self, gamma: torch.Tensor) -> torch.Tensor:
        """Bool mask [N]: |gamma| >= sorted(|gamma|)[floor(percentile * N)]."""
        mags = gamma.detach().abs().flatten()
        threshold = torch.sort(mags).values[int(self.percentile * mags.numel())]
        return mags >= threshold

    def rate(self, t: float, total: float, gamma: Optional[torch.Tensor] = None) -> Rate:
        _check_total("gcp_variable", total)
        if t < self.relax_after * total:
            return float(self.s)
        if gamma is None:
            raise ConfigError("gcp_variable: after the relax point the rate needs the scaling factors (gamma)")
        mask = self.important(gamma)
        rates = torch.full(mask.shape, float(self.s), dtype=gamma.dtype, device=gamma.device)
        rates[mask] = self.relaxed_factor * self.s
        return rates


@dataclass
class LinearDecay:
    """Paper 3's decaying rate: ``s0 * (1 - decay * t / total)`` (decay 0.9: from s0 down to 0.1 * s0)."""

    s: float = 1e-4
    decay: float = 0.9

    def rate(self, t: float, total: float, gamma: Optional[torch.Tensor] = None) -> Rate:
        _check_total("linear_decay", total)
        return float(self.s * (1.0 - self.decay * t / total))


@dataclass
class CosineDecay:
    """Half-cosine from ``s`` at t=0 to ``final`` at t=total."""

    s: float = 1.0
    final: float = 0.0

    def rate(self, t: float, total: float, gamma: Optional[torch.Tensor] = None) -> Rate:
        _check_total("cosine_decay", total)
        frac = min(1.0, max(0.0, t / total))
        return float(self.final + (self.s - self.final) * 0.5 * (1.0 + math.cos(math.pi * frac)))


SCHEDULES = {"constant": Constant, "gcp_variable": GCPVariable, "linear_decay": LinearDecay,
             "cosine_decay": CosineDecay}


def make_schedule(name: str, s: float, **kwargs) -> object:
    """Build a schedule by name with base rate `s` and its own keyword options."""
    if name not in SCHEDULES:
        raise ConfigError(f"unknown schedule {name!r}; known: {sorted(SCHEDULES)}")
    try:
        return SCHEDULES[name](s=s, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"schedule {name!r}: {exc}") from None
