"""FTWT's self-supervised mask labels (paper 9): which filters of a layer an input really uses.

Per input and filter, the activation strength is the filter's largest activation over space; the label keeps the
filters that together carry a fraction `threshold` of the total strength (``mass``) or drops a fixed fraction of the
weakest (``uniform``). Dead filters (a share of the mass at most `DEAD`) are always labelled 0.
"""
from __future__ import annotations

import torch

from ..errors import ConfigError

DEAD = 1e-5  # a filter whose share of the activation mass is at most this is "dead" (label 0) in every mode
MODES = ("mass", "uniform")


def channel_strength(output: torch.Tensor) -> torch.Tensor:
    """Each filter's largest absolute activation over space.

    Args:
        output: a layer's (post-activation) output ``[B, C, H, W]`` (or ``[B, C]``).

    Returns:
        ``[B, C]`` non-negative strengths.
    """
    if output.dim() < 2:
        raise ConfigError(f"prunekit.dynamic: channel_strength needs [B, C, ...] activations, got {tuple(output.shape)}")
    return output.detach().abs().flatten(2).amax(dim=2) if output.dim() > 2 else output.detach().abs()


def mass_labels(strength: torch.Tensor, threshold: float) -> torch.Tensor:
    """Keep the fewest filters whose strengths sum to at least `threshold` of the total (the heat-map mass rule).

    At ``threshold = 1.0`` only dead filters are dropped.

    Args:
        strength: ``[B, C]`` from `channel_strength`.
        threshold: mass fraction r in (0, 1].

    Returns:
        ``[B, C]`` float labels in {0, 1}.
    """
    if not 0.0 < threshold <= 1.0:
        raise ConfigError(f"prunekit.dynamic: mass threshold must lie in (0, 1], got {threshold}")
    share = strength / strength.sum(dim=1, keepdim=True).clamp_min(1e-12)
    alive = share > DEAD
    if threshold >= 1.0:
        return alive.float()
    ordered, order = share.sort(dim=1, descending=True)
    before = ordered.cumsum(dim=1) - ordered  # mass of the stronger filters
    keep_sorted = before < threshold  # a filter is kept while the mass before it is still short of r
    keep = torch.zeros_like(keep_sorted).scatter(1, order, keep_sorted)
    return (keep & alive).float()


def uniform_labels(strength: torch.Tensor, ratio: float) -> torch.Tensor:
    """Drop the `ratio` weakest filters of every input (plus dead ones).

    Args:
        strength: ``[B, C]``.
        ratio: fraction in [0, 1) of filters dropped per input.

    Returns:
        ``[B, C]`` float labels in {0, 1}.
    """
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"prunekit.dynamic: uniform drop ratio must lie in [0, 1), got {ratio}")
    channels = strength.shape[1]
    drop = int(round(ratio * channels))
    share = strength / strength.sum(dim=1, keepdim=True).clamp_min(1e-12)
    keep = share > DEAD
    if drop > 0:
        weakest = strength.topk(drop, dim=1, largest=False).indices
        keep = keep.scatter(1, weakest, False)
    return keep.float()


def labels(strength: torch.Tensor, mode: str, threshold: float) -> torch.Tensor:
    """`mass_labels` (mode ``mass``, `threshold` = r) or `uniform_labels` (mode ``uniform``, drop 1 - r)."""
    if mode == "mass":
        return mass_labels(strength, threshold)
    if mode == "uniform":
        return uniform_labels(strength, 1.0 - threshold)
    raise ConfigError(f"prunekit.dynamic: ground-truth mode must be one of {MODES}, got {mode!r}")
