"""The closed-form reconstruction: which kept channels stand in for a damaged one, and by how much.

The consumer of a layer computes Y = sum_i W'_i A_i over all channels i. After pruning and quantization it sees
only the damaged kept channels Ã_k. Each original channel is rebuilt as A_i ~ sum_k S[i, k] Ã_k and the consumer's
kept columns become W''_k = sum_i W'_i S[i, k]. With second moments (the "moments" of `moments.py`, data-free or
measured) the squared error of channel i, E[(A_i - sum_k S[i, k] Ã_k)^2], is a quadratic in S[i, :]:

* ``single`` (UDFC-style, one partner): a kept channel is rebuilt from itself only (its quantization loss), a pruned
  channel from the one kept partner with the smallest error; s = E[A_i Ã_k] / (E[Ã_k^2] + alpha), error
  E[A_i^2] - 2 s E[A_i Ã_k] + s^2 E[Ã_k^2]. A pruned channel whose best error exceeds E[A_i^2] (no partner helps)
  is dropped uncompensated.
* ``all``: every channel from all kept channels (ridge least squares), S = E[A Ã^T] (E[Ã Ã^T] + alpha I)^-1.

alpha is ``ridge`` times the mean of E[Ã_k^2] (a scale-free ridge term).

`neuron_merging_scales` is the baseline rule of Neuron Merging (Kim et al., NeurIPS 2020) in its BN form.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class Moments:
    """Second moments of one layer's activations (float64).

    Attributes:
        mean_a: [C] E[A_i] of the original channels.
        second_a: [C] E[A_i^2].
        cross: [C, K] E[A_i Ã_k] between original channels and damaged kept channels.
        gram: [K, K] E[Ã_k Ã_l] (``partners="all"``) or [K] its diagonal (``"single"``).
        mean_d: [K] E[Ã_k].
    """

    mean_a: torch.Tensor
    second_a: torch.Tensor
    cross: torch.Tensor
    gram: torch.Tensor
    mean_d: torch.Tensor


def centered(m: Moments) -> Moments:
    """The same moments about the means (covariances): the least squares with an intercept, which the bias
    correction then supplies."""
    gram = m.gram - (torch.outer(m.mean_d, m.mean_d) if m.gram.dim() == 2 else m.mean_d ** 2)
    return Moments(m.mean_a, m.second_a - m.mean_a ** 2, m.cross - torch.outer(m.mean_a, m.mean_d), gram, m.mean_d)


def solve(m: Moments, kept: torch.Tensor, partners: str = "single", ridge: float = 0.0,
          prior: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The reconstruction matrix S [C, K] (float64) minimising the moment-estimated squared error plus
    alpha * ||S - prior||^2.

    Args:
        m: the layer's moments.
        kept: [K] long, the kept channels' indices among the C channels (order of the columns of `m.cross`).
        partners: ``"single"`` or ``"all"``.
        ridge: alpha relative to the mean E[Ã_k^2].
        prior: [C, K] what the ridge term shrinks towards; None: zero (the plain ridge). `identity_prior` (each kept
            channel stands for itself, pruned ones for nothing: no compensation) keeps an undamaged channel exactly
            as it is, where shrinking towards zero would scale it by E[Ã_k^2] / (E[Ã_k^2] + alpha), a loss of up to
            several percent on every low-variance channel of every layer.
    """
    C, K = m.cross.shape
    diag = m.gram if m.gram.dim() == 1 else torch.diagonal(m.gram)
    alpha = float(ridge) * float(diag.mean()) if K else 0.0
    target = m.cross if prior is None else m.cross + alpha * prior.to(m.cross.dtype)
    if partners == "all":
        gram = m.gram if m.gram.dim() == 2 else torch.diag(m.gram)
        eye = torch.eye(K, dtype=gram.dtype)
        return torch.linalg.solve(gram + alpha * eye + 1e-12 * eye, target.T).T
    S = torch.zeros(C, K, dtype=torch.float64)
    denom = diag + alpha
    safe = torch.where(denom > 0, denom, torch.ones_like(denom))
    scale = torch.where(denom > 0, target / safe, torch.zeros_like(m.cross))  # [C, K] best s per pair
    error = m.second_a.unsqueeze(1) - 2 * scale * m.cross + scale ** 2 * diag
    is_kept = torch.zeros(C, dtype=torch.bool)
    is_kept[kept] = True
    cols = torch.arange(K)
    S[kept, cols] = scale[kept, cols]
    for i in torch.nonzero(~is_kept).flatten().tolist():
        best = int(torch.argmin(error[i]))
        if error[i, best] < m.second_a[i]:
            S[i, best] = scale[i, best]
    return S


def identity_prior(C: int, kept: torch.Tensor) -> torch.Tensor:
    """[C, K] float64: 1 at (kept[k], k), else 0 (no compensation: the consumer's columns unchanged)."""
    out = torch.zeros(C, kept.numel(), dtype=torch.float64)
    out[kept, torch.arange(kept.numel())] = 1.0
    return out


def estimated_error(m: Moments, S: torch.Tensor, weight_norms: Optional[torch.Tensor] = None) -> float:
    """Relative reconstruction error sum_i w_i E[(A_i - S_i Ã)^2] / sum_i w_i E[A_i^2] under the moments, with
    w_i = ||W'_i||^2 (the consumer's column norms, the spec's weighting) or 1. Uses only the diagonal of the gram
    when it is all there is (exact for ``single``)."""
    gram = m.gram if m.gram.dim() == 2 else None
    if gram is None:
        quad = (S ** 2 * m.gram).sum(1)
    else:
        quad = ((S @ gram) * S).sum(1)
    per = m.second_a - 2 * (S * m.cross).sum(1) + quad
    w = weight_norms if weight_norms is not None else torch.ones_like(per)
    return float((w * per).sum() / (w * m.second_a).sum().clamp_min(1e-30))


def neuron_merging_scales(weight: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, mean: torch.Tensor,
                          std: torch.Tensor, kept: torch.Tensor, lam: float = 0.85,
                          threshold: float = 0.1) -> torch.Tensor:
    """Neuron Merging's data-free rule (BN form), as a reconstruction matrix S [C, K].

    For pruned p and kept m with filters W (raw conv weights, flattened [C, n]) the BN outputs satisfy
    z_p - beta_p ~ s (z_m - beta_m) when W_p ~ c W_m, with s = (|W_p| / |W_m|) (gamma_p / std_p) (std_m / gamma_m).
    The partner minimises lam * (1 - cos(W_p, W_m)) + (1 - lam) * |b_p - s b_m| / max(|b_p - s b_k|), where
    b = beta - gamma * mean / std is the BN's effective bias; merging needs cos >= `threshold` and s > 0 (ReLU
    commutes only with positive scales); otherwise the channel is pruned uncompensated. Kept channels keep S = 1.
    """
    w = weight.reshape(weight.shape[0], -1).double()
    C, K = w.shape[0], kept.numel()
    norms = w.norm(dim=1).clamp_min(1e-30)
    cos = (w @ w[kept].T) / (norms.unsqueeze(1) * norms[kept].unsqueeze(0))
    gain = gamma.double() / std.double()
    scale = (norms.unsqueeze(1) / norms[kept].unsqueeze(0)) * gain.unsqueeze(1) / torch.where(
        gain[kept].abs() > 1e-30, gain[kept], torch.full_like(gain[kept], 1e-30)).unsqueeze(0)
    bias = beta.double() - gain * mean.double()
    mismatch = (bias.unsqueeze(1) - scale * bias[kept].unsqueeze(0)).abs()
    mismatch = mismatch / mismatch.amax(1, keepdim=True).clamp_min(1e-30)
    score = lam * (1 - cos) + (1 - lam) * mismatch
    score = torch.where((scale > 0) & (cos >= threshold), score, torch.full_like(score, float("inf")))
    S = torch.zeros(C, K, dtype=torch.float64)
    S[kept, torch.arange(K)] = 1.0
    is_kept = torch.zeros(C, dtype=torch.bool)
    is_kept[kept] = True
    for p in torch.nonzero(~is_kept).flatten().tolist():
        best = int(torch.argmin(score[p]))
        if torch.isfinite(score[p, best]):
            S[p, best] = scale[p, best]
    return S
