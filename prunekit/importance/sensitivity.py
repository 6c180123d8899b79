"""``sensitivity``: scores read from measured per-group sensitivity curves (`prunekit analyze --sensitivity`).

The unit ranked k-th (of n) inside a group by the curves' own unit order scores the damage measured when the first
``k + 1`` units are gone: the curve (loss increase, or accuracy drop) interpolated linearly at ``(k + 1) / n`` and
extrapolated past the last ratio along its last segment, made non-decreasing, plus a vanishing tie-break in rank.
Scores are therefore comparable ACROSS groups (a unit of a robust group is cheap, one of a fragile group dear), and
the returned `Scores` says so (``across_groups``): ranking allocators (global, cost_rank) skip their per-group
normalisation for it. Inside a group, units go in the order the curves were measured with.

The curves come from ``curves=PATH`` (a JSON written by ``prunekit analyze --sensitivity --json PATH``) or, by
default, from the newest cached measurement of this exact model (same architecture and weights).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

import torch

from ..errors import ConfigError
from ..graph.types import ChannelGroup, Scores
from .base import Criterion, CriterionConfig

log = logging.getLogger("prunekit")


@dataclass
class SensitivityCriterionConfig(CriterionConfig):
    """Adds ``curves`` (a curves JSON; None: the cache) and ``metric`` (``loss`` or ``accuracy``)."""

    curves: Optional[str] = None
    metric: str = "loss"

    def __post_init__(self):
        super().__post_init__()
        from ..planning.sensitivity import METRICS

        if self.metric not in METRICS:
            raise ConfigError(f"criterion sensitivity: metric must be one of {METRICS}, got {self.metric!r}")


def unit_scores(damage: Sequence[float], ratios: Sequence[float], order: Sequence[int]) -> torch.Tensor:
    """Per-unit scores [n] of one group from its damage curve.

    Args:
        damage: damage at ``[0] + ratios`` (starts at 0).
        ratios: the measured ratios (increasing, in (0, 1)).
        order: unit indices, first removed first (a permutation of range(n)).

    Returns:
        float32 [n]; ``out[order[k]]`` is the damage at fraction ``(k + 1) / n``, non-decreasing in k.
    """
    xs = [0.0] + [float(r) for r in ratios]
    ys = [float(d) for d in damage]
    n = len(order)
    out = torch.empty(n, dtype=torch.float32)
    level = float("-inf")
    span = max(abs(y) for y in ys) or 1.0
    for k, unit in enumerate(order):
        f = (k + 1) / n
        j = next((i for i in range(1, len(xs)) if f <= xs[i]), len(xs) - 1)  # the segment holding f (or the last)
        x0, x1, y0, y1 = xs[j - 1], xs[j], ys[j - 1], ys[j]
        value = y0 + (y1 - y0) * (f - x0) / (x1 - x0)
        level = max(level, value)
        out[unit] = level + 1e-6 * span * f  # strictly increasing in rank: the measured order is kept
    return out


class Sensitivity(Criterion):
    """Scores from measured sensitivity curves; groups without a curve are left out (allocators leave them)."""

    Config = SensitivityCriterionConfig

    def score(self, model: torch.nn.Module, groups: Sequence[ChannelGroup], stats: Any = None) -> Scores:
        from ..planning.sensitivity import SensitivityCurves, latest_cached
        from ..prune.plan import model_fingerprint

        if self.config.curves:
            curves = SensitivityCurves.load(self.config.curves)
        else:
            curves = latest_cached(model)
            if curves is None:
                raise ConfigError("criterion sensitivity: no cached sensitivity curves for this model (same "
                                  "architecture and weights); run `prunekit analyze --model NAME --sensitivity "
                                  "--data DATASET` first, or set criterion option curves=PATH")
        if curves.fingerprint != model_fingerprint(model):
            raise ConfigError(f"criterion sensitivity: the curves in {self.config.curves or 'the cache'} were "
                              f"measured on another architecture (fingerprint {curves.fingerprint})")
        out = Scores(criterion=getattr(self, "name", "sensitivity"), across_groups=True)
        missing: List[str] = []
        for group in groups:
            entry = curves.groups.get(group.id)
            if entry is None or int(entry["size"]) != group.size:
                missing.append(group.id)
                continue
            out[group.id] = unit_scores(curves.damage(group.id, self.config.metric), curves.ratios, entry["order"])
        if missing:
            log.info("criterion sensitivity: no curve for %d group(s) (left alone): %s", len(missing),
                     ", ".join(missing[:8]))
        return out
