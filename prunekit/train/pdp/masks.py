"""The mask arithmetic of PDP and gradual magnitude pruning: thresholds, soft masks, hard masks, schedules.

Everything works on a *row view* of a weight: a 2-D tensor ``[R, n]`` whose rows are the units that share one
threshold. Unstructured sparsity uses one row holding every weight of the layer; N:M sparsity uses one row per group
of M consecutive weights along the input dimension; the channel variant uses one row of per-channel norms.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch


def kth_smallest_pair(mag: torch.Tensor, k: int) -> tuple:
    """The k-th and (k+1)-th smallest values of every row (1-based k, 1 <= k < n).

    Args:
        mag: [R, n] non-negative magnitudes.
        k: how many entries of each row are pruned.

    Returns:
        (w_h [R], w_t [R]): the largest pruned and the smallest kept magnitude of each row.
    """
    n = mag.shape[-1]
    if not 1 <= k < n:
        raise ValueError(f"pdp.masks: k must lie in [1, {n - 1}] for rows of {n}, got {k}")
    if n <= 64:  # short rows (N:M groups, channel norms): one sort
        vals = mag.sort(dim=-1).values
        return vals[:, k - 1], vals[:, k]
    return mag.kthvalue(k, dim=-1).values, mag.kthvalue(k + 1, dim=-1).values


def midpoint_threshold(mag: torch.Tensor, k: int) -> torch.Tensor:
    """PDP's threshold t = (W_h + W_t) / 2 per row, where W_h is the largest pruned and W_t the smallest kept
    magnitude when `k` entries of the row are pruned. Shape [R] (detached)."""
    with torch.no_grad():
        w_h, w_t = kth_smallest_pair(mag.detach(), k)
        return 0.5 * (w_h + w_t)


def relative_temperature(mag: torch.Tensor, tau: float) -> torch.Tensor:
    """The layer's temperature: ``tau * mean(mag^2)`` (a scalar tensor, detached, floored at 1e-12).

    The softmax of PDP compares squared magnitudes, so a fixed temperature is hard in a layer of large weights and
    flat in a layer of small ones. Scaling it by the layer's mean squared magnitude (its RMS squared) makes `tau`
    dimensionless: the same `tau` gives the same mask sharpness in every layer, whatever its weight scale. It is
    recomputed at every step, like the threshold.
    """
    with torch.no_grad():
        return (tau * mag.detach().float().pow(2).mean()).clamp_min(1e-12)


def soft_mask(mag: torch.Tensor, threshold: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """m = softmax([t^2, w^2] / tau)[1] = sigmoid((w^2 - t^2) / tau); differentiable in `mag`.

    Args:
        mag: [R, n] magnitudes (or the signed weights themselves: only their squares are used).
        threshold: [R] per-row threshold t (detached).
        temperature: scalar temperature tau.

    Returns:
        [R, n] mask in (0, 1); exactly 0.5 where |w| = t, increasing in |w|.
    """
    return torch.sigmoid((mag * mag - (threshold * threshold).unsqueeze(-1)) / temperature)


def hard_keep(mag: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean [R, n]: keep every entry but the `k` smallest of each row (exactly n - k kept; ties by position)."""
    n = mag.shape[-1]
    keep = torch.ones_like(mag, dtype=torch.bool)
    if k <= 0:
        return keep
    k = min(k, n)
    idx = mag.detach().topk(k, dim=-1, largest=False).indices
    return keep.scatter(-1, idx, False)


def global_layer_ratios(magnitudes: Sequence[torch.Tensor], sparsity: float) -> list:
    """Per-layer sparsities from one global magnitude sort: the fraction of each layer below the global threshold
    that prunes `sparsity` of all weights together (each layer capped so that it keeps at least one weight).

    Args:
        magnitudes: one tensor of |w| per layer (any shape).
        sparsity: overall fraction to prune, in [0, 1).
    """
    flat = torch.cat([m.detach().reshape(-1).float() for m in magnitudes])
    k = int(round(sparsity * flat.numel()))
    if k <= 0:
        return [0.0 for _ in magnitudes]
    threshold = flat.kthvalue(k).values
    out = []
    for m in magnitudes:
        n = m.numel()
        below = int((m.detach().float() <= threshold).sum())
        out.append(min(below, n - 1) / n)
    return out


def prune_count(n: int, ratio: float) -> int:
    """Entries of an n-entry row pruned at `ratio` (rounded, at most n - 1)."""
    return max(0, min(n - 1, int(round(ratio * n))))


def ramp(step: int, start: int, length: int) -> float:
    """PDP's linear ramp of the target: 0 before `start`, then min(1, (step - start + 1) / length)."""
    if step < start:
        return 0.0
    if length <= 0:
        return 1.0
    return min(1.0, (step - start + 1) / length)


def cubic(step: int, start: int, length: int) -> float:
    """Zhu and Gupta's gradual schedule as a fraction of the final sparsity: 1 - (1 - (step - start) / length)^3,
    0 before `start`, 1 from ``start + length`` on (initial sparsity 0)."""
    if step < start:
        return 0.0
    if length <= 0:
        return 1.0
    x = min(1.0, (step - start) / length)
    return 1.0 - (1.0 - x) ** 3


def cubic_update(step: int, start: int, length: int, every: int) -> Optional[float]:
    """Gradual magnitude pruning's update rule: the `cubic` fraction at `step` if the hard masks are recomputed then
    (every `every` steps from `start`, and at the ramp's last step ``start + length``), else None (outside the ramp
    or between updates: the masks stay as they are)."""
    if step < start or step > start + length:
        return None
    if (step - start) % every and step != start + length:
        return None
    return cubic(step, start, length)

