"""Densities -> channel multipliers (PreCrop step 2), with the engine's groups supplying the ties.

A layer's density is realised as ``p_l = prod_g alpha_g ** e_lg`` (see `layers`). The paper solves the plain chain
sequentially (alpha_l = p_l / alpha_{l-1}); with residual adds and depthwise convolutions several layers share one
group, so the system is over-determined. We solve it in log space by least squares,
``min_x sum_l (sum_g e_lg x_g - log p_l)^2`` with ``x_g = log alpha_g`` (the `[derived]` form of methods.md section
8; on a plain chain with feasible densities it reproduces the sequential solution exactly), under bounds
``1/size_g <= alpha_g <= max_scale`` by an active-set loop (clip, fix, re-solve). A group's multiplier is therefore
set by ALL its members' densities at once. Clipping changes the total, so the multipliers are finally shifted by a
common factor (bisection in log space) until the params / MACs budget holds (the pitfall "clip it and re-normalise to
the budget").
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch

from ...errors import ConfigError
from .layers import Layer, total, variable_groups


def multipliers_from_densities(layers: List[Layer], densities: Dict[str, float], sizes: Dict[str, int],
                               max_scale: float = 1.0) -> Dict[str, float]:
    """Least-squares log multipliers {group id: alpha_g} for {layer: p_l}, within ``[1/size_g, max_scale]``.

    Args:
        layers: from `layers.weighted_layers`.
        densities: layer name -> p_l > 0 (layers without prunable groups are ignored).
        sizes: group id -> units (bounds the smallest multiplier to one unit).
        max_scale: the largest multiplier (1: prune only; > 1: the reconfigure mode may widen).
    """
    groups = variable_groups(layers)
    rows = [layer for layer in layers if layer.groups]
    if not groups or not rows:
        return {}
    col = {g: i for i, g in enumerate(groups)}
    a = torch.zeros(len(rows), len(groups), dtype=torch.float64)
    b = torch.zeros(len(rows), dtype=torch.float64)
    for r, layer in enumerate(rows):
        p = densities.get(layer.name)
        if p is None or not p > 0:
            raise ConfigError(f"precrop: layer '{layer.name}' has no positive density ({p})")
        b[r] = math.log(p)
        for gid, e in layer.groups.items():
            a[r, col[gid]] = float(e)
    lo = torch.tensor([math.log(1.0 / sizes[g]) for g in groups], dtype=torch.float64)
    hi = torch.full((len(groups),), math.log(max_scale), dtype=torch.float64)
    fixed: Dict[int, float] = {}
    x = torch.zeros(len(groups), dtype=torch.float64)
    for _ in range(len(groups) + 1):
        free = [i for i in range(len(groups)) if i not in fixed]
        if not free:
            break
        rhs = b.clone()
        for i, v in fixed.items():
            rhs -= a[:, i] * v
        sol = torch.linalg.lstsq(a[:, free], rhs.unsqueeze(1), driver="gelsd").solution.squeeze(1)
        x[free] = sol
        for i, v in fixed.items():
            x[i] = v
        violated = [i for i in free if x[i] < lo[i] - 1e-12 or x[i] > hi[i] + 1e-12]
        if not violated:
            break
        for i in violated:
            fixed[i] = float(x[i].clamp(lo[i], hi[i]))
    x = torch.maximum(torch.minimum(x, hi), lo)
    return {g: float(math.exp(x[col[g]])) for g in groups}


def renormalise(layers: List[Layer], alpha: Dict[str, float], sizes: Dict[str, int],
                keep_params: Optional[float] = None, keep_macs: Optional[float] = None,
                max_scale: float = 1.0) -> Dict[str, float]:
    """Scale every multiplier by one common factor (then clip to ``[1/size, max_scale]``) so that the layers'
    weights and/or MACs are at most the budget fractions, as close to them as the bounds allow.

    Returns:
        the scaled multipliers (the same keys).
    """
    if keep_params is None and keep_macs is None:
        return dict(alpha)
    full = {"params": total(layers, None, "params"), "macs": total(layers, None, "macs")}

    def shifted(t: float) -> Dict[str, float]:
        return {g: min(max(a * math.exp(t), 1.0 / sizes[g]), max_scale) for g, a in alpha.items()}

    shifts = []
    for target, frac in (("params", keep_params), ("macs", keep_macs)):
        if frac is None:
            continue
        goal = frac * full[target]
        lo, hi = -30.0, 30.0
        if total(layers, shifted(lo), target) > goal:
            raise ConfigError(f"precrop: keep_{target}={frac} is below the smallest network (one unit per group)")
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if total(layers, shifted(mid), target) <= goal else (lo, mid)
        shifts.append(lo)
    return shifted(min(shifts))


def uniform_multipliers(layers: List[Layer], sizes: Dict[str, int], keep_params: Optional[float] = None,
                        keep_macs: Optional[float] = None) -> Dict[str, float]:
    """One multiplier for every prunable group, meeting the budget (the uniform-width baseline)."""
    return renormalise(layers, {g: 1.0 for g in variable_groups(layers)}, sizes, keep_params, keep_macs)
