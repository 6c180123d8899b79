"""SynExp (PreCrop v2): layer densities maximising sum_l log p_l under parameter and/or MACs budgets.

    maximise  sum_l log p_l
    subject to sum_l p_l n_l <= P,  sum_l p_l F_l <= B,  0 < p_l <= u_l

is convex; its KKT conditions give ``p_l = min(u_l, 1 / (mu n_l + nu F_l))`` with multipliers mu, nu >= 0
(water-filling: with one budget every layer keeps about the same NUMBER of weights, capped at u_l). One budget: mu
by bisection. Two budgets: exact coordinate minimisation of the (convex, smooth) dual, alternating a bisection on mu
and one on nu until both budgets hold with complementary slackness.
"""
from __future__ import annotations

from typing import Dict, List, Optional

from ...errors import ConfigError
from .layers import Layer


def _p(cp: List[float], cf: List[float], up: List[float], mu: float, nu: float) -> List[float]:
    out = []
    for a, b, u in zip(cp, cf, up):
        rate = mu * a + nu * b
        out.append(u if rate <= 0 else min(u, 1.0 / rate))
    return out


def _solve_one(coef: List[float], other: List[float], up: List[float], fixed: float, budget: float,
               key: str) -> float:
    """The smallest multiplier m >= 0 with sum p_l coef_l <= budget, the other multiplier held (`other` = its
    coefficients already multiplied by it)."""
    def used(m: float) -> float:
        return sum(p * c for p, c in zip(_p(coef, other, up, m, 1.0), coef))

    if used(0.0) <= budget:
        return 0.0
    lo, hi = 0.0, 1.0
    while used(hi) > budget:
        hi *= 2.0
        if hi > 1e30:
            raise ConfigError(f"synexp: the {key} budget cannot be met")
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if used(mid) > budget else (lo, mid)
    return hi


def synexp_densities(layers: List[Layer], keep_params: Optional[float] = None, keep_macs: Optional[float] = None,
                     upper: Optional[Dict[str, float]] = None, iterations: int = 200) -> Dict[str, float]:
    """Densities {layer name: p_l} solving the SynExp program.

    Args:
        layers: from `layers.weighted_layers`; layers with no prunable group stay dense (p = 1) and their weights
            count against the budget as they are.
        keep_params / keep_macs: budget as a fraction of the layers' total weights / MACs (at least one).
        upper: layer name -> u_l (default 1; above 1 in the reconfigure mode).

    Raises:
        ConfigError: no budget, a fraction out of range, or a budget below what the fixed layers already use.
    """
    if keep_params is None and keep_macs is None:
        raise ConfigError("synexp: give keep_params and/or keep_macs")
    upper = upper or {}
    free = [layer for layer in layers if layer.groups]
    fixed = [layer for layer in layers if not layer.groups]
    budgets = {}
    for key, frac, attr in (("params", keep_params, "weights"), ("macs", keep_macs, "macs")):
        if frac is None:
            continue
        if not 0.0 < frac <= max([1.0] + list(upper.values())):
            raise ConfigError(f"synexp: keep_{key} must be a positive fraction, got {frac}")
        total = sum(getattr(layer, attr) for layer in layers)
        left = frac * total - sum(getattr(layer, attr) for layer in fixed)
        if left <= 0:
            raise ConfigError(f"synexp: keep_{key}={frac} is below what the unprunable layers use "
                              f"({sum(getattr(x, attr) for x in fixed)} of {total})")
        budgets[key] = left
    up = [float(upper.get(layer.name, 1.0)) for layer in free]
    cp = [float(layer.weights) for layer in free]
    cf = [float(layer.macs) for layer in free]
    # scale coefficients to O(1) so the bisection brackets stay small
    sp, sf = (sum(cp) or 1.0), (sum(cf) or 1.0)
    cp_n, cf_n = [c / sp for c in cp], [c / sf for c in cf]
    bp = budgets.get("params", float("inf")) / sp
    bf = budgets.get("macs", float("inf")) / sf
    mu = nu = 0.0
    for _ in range(iterations if len(budgets) == 2 else 1):
        prev = (mu, nu)
        if "params" in budgets:
            mu = _solve_one(cp_n, [c * nu for c in cf_n], up, 0.0, bp, "params")
        if "macs" in budgets:
            nu = _solve_one(cf_n, [c * mu for c in cp_n], up, 0.0, bf, "macs")
        if abs(mu - prev[0]) <= 1e-10 * (1 + mu) and abs(nu - prev[1]) <= 1e-10 * (1 + nu):
            break
    if "params" in budgets and "macs" in budgets:  # the last nu step may have left params slack-violated: refit
        mu = _solve_one(cp_n, [c * nu for c in cf_n], up, 0.0, bp, "params")
    p = _p(cp_n, cf_n, up, mu, nu)
    out = {layer.name: 1.0 for layer in fixed}
    out.update({layer.name: float(v) for layer, v in zip(free, p)})
    return out
