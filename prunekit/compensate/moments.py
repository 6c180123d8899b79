"""Moments of rectified Gaussians: the data-free statistics behind UDFC-style compensation.

A BatchNorm output channel is modelled as z ~ N(beta, gamma^2) (what the BN's affine parameters promise once the
running statistics hold), and the activation a ReLU of it. Three formulas are needed (derivation in docs/udfc.md):

* E[ReLU(z)] = m * Phi(m / s) + s * phi(m / s)                      (z ~ N(m, s^2))
* E[ReLU(z)^2] = (m^2 + s^2) * Phi(m / s) + m * s * phi(m / s)
* E[ReLU(x) ReLU(y)] for (x, y) jointly Gaussian with correlation rho: a one-dimensional integral over x of
  ReLU(x) * E[ReLU(y) | x] (the inner expectation is again the first formula, with the conditional mean and
  deviation), done by Gauss-Legendre quadrature split at the kink of the integrand, so it stays accurate when
  |rho| -> 1 (where y is a deterministic function of x).

Everything is vectorised over broadcastable tensors and computed in float64.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Tuple

import torch

_SQRT2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SPAN = 9.0  # standard deviations integrated on each side; beyond that the Gaussian mass is < 1e-18
_EPS = 1e-12


def _pdf(u: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * u * u) * _INV_SQRT_2PI


def _cdf(u: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(u / _SQRT2))


def _as64(*xs) -> Tuple[torch.Tensor, ...]:
    return tuple(torch.as_tensor(x, dtype=torch.float64) for x in xs)


def relu_mean(mean, std) -> torch.Tensor:
    """E[ReLU(z)] for z ~ N(mean, std^2); std may be 0 (then ReLU(mean)). Shapes broadcast."""
    m, s = _as64(mean, std)
    s = s.abs()
    safe = s.clamp_min(_EPS)
    u = m / safe
    out = m * _cdf(u) + safe * _pdf(u)
    return torch.where(s > _EPS, out, m.clamp_min(0.0))


def relu_second_moment(mean, std) -> torch.Tensor:
    """E[ReLU(z)^2] for z ~ N(mean, std^2). Shapes broadcast."""
    m, s = _as64(mean, std)
    s = s.abs()
    safe = s.clamp_min(_EPS)
    u = m / safe
    out = (m * m + safe * safe) * _cdf(u) + m * safe * _pdf(u)
    return torch.where(s > _EPS, out, m.clamp_min(0.0) ** 2)


@lru_cache(maxsize=4)
def _legendre(n: int) -> Tuple[torch.Tensor, torch.Tensor]:
    import numpy as np

    x, w = np.polynomial.legendre.leggauss(n)
    return torch.from_numpy(x), torch.from_numpy(w)


def _segment(lo: torch.Tensor, hi: torch.Tensor, f, nodes: int) -> torch.Tensor:
    """Gauss-Legendre integral of f over [lo, hi] (elementwise intervals; hi <= lo gives 0)."""
    x, w = _legendre(nodes)
    half = ((hi - lo) * 0.5).clamp_min(0.0).unsqueeze(-1)
    mid = ((hi + lo) * 0.5).unsqueeze(-1)
    u = mid + half * x
    return (half * w * f(u)).sum(-1)


def relu_cross_moment(mean1, std1, mean2, std2, rho, nodes: int = 48) -> torch.Tensor:
    """E[ReLU(x) ReLU(y)] for jointly Gaussian x ~ N(mean1, std1^2), y ~ N(mean2, std2^2), corr(x, y) = rho.

    Writing x = mean1 + std1 * u with u ~ N(0, 1), y | u ~ N(mean2 + std2 * rho * u, std2^2 (1 - rho^2)), so the
    moment is the integral over u > -mean1 / std1 of (mean1 + std1 u) * E[ReLU(y) | u] * phi(u). The integrand has a
    kink at u = -mean2 / (std2 rho) when |rho| = 1; the interval is split there. Shapes broadcast; float64 result.
    """
    m1, s1, m2, s2, r = _as64(mean1, std1, mean2, std2, rho)
    s1, s2 = s1.abs(), s2.abs()
    m1, s1, m2, s2, r = torch.broadcast_tensors(m1, s1, m2, s2, r.clamp(-1.0, 1.0))
    lo = (-m1 / s1.clamp_min(_EPS)).clamp(-_SPAN, _SPAN)
    hi = torch.full_like(lo, _SPAN)
    slope = s2 * r
    kink = torch.where(slope.abs() > _EPS, -m2 / torch.where(slope.abs() > _EPS, slope, torch.ones_like(slope)), lo)
    kink = torch.maximum(torch.minimum(kink, hi), lo)
    cond_std = (s2 * torch.sqrt((1.0 - r * r).clamp_min(0.0))).unsqueeze(-1)
    a1, b1, a2, b2 = (t.unsqueeze(-1) for t in (m1, s1, m2, slope))

    def integrand(u: torch.Tensor) -> torch.Tensor:
        x = (a1 + b1 * u).clamp_min(0.0)
        return x * relu_mean(a2 + b2 * u, cond_std) * _pdf(u)

    return _segment(lo, kink, integrand, nodes) + _segment(kink, hi, integrand, nodes)
