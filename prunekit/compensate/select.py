"""Which channels to prune when they will be compensated: the smallest data-free reconstruction error.

methods.md section 12, pipeline step 1 allows choosing the pruned channels "by smallest l(s*)". With the all-partner
closed form and centred moments (the bias correction supplies the means), the kept channels K rebuild a pruned set
P with the residual covariance Sigma_{P|K} = Sigma_PP - Sigma_PK Sigma_KK^-1 Sigma_KP = (Lambda_PP)^-1, where
Lambda = (Sigma + alpha I)^-1 is the precision matrix of the channel covariances. The consumer's expected squared
output error is then

    err(P) = tr(M_PP (Lambda_PP)^-1),   M = sum over consumers and kernel offsets of W'[:, i] W'[:, j]

(cross terms between pruned channels included, spatial correlation of the residuals ignored). A channel that is a
near copy of kept ones costs little even with a large norm, which an l1 criterion cannot see. The set is grown
greedily (one channel at a time, every candidate scored in one batched inverse). Everything comes from the
BatchNorm moments and the weights: no data.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch

from .closed_form import centered
from .sources import bn_moments


def channel_covariance(w: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Data-free covariance of the ReLU outputs of one layer (white-input model, `sources.bn_moments`).

    Args:
        w: [C, n] folded filters, flattened. beta, gamma: [C] the BatchNorm's shift and scale.

    Returns:
        [C, C] float64 Cov(A_i, A_j).
    """
    C = w.shape[0]
    m = centered(bn_moments(w, w, beta, gamma, torch.arange(C), "all"))
    cov = m.gram.clone()
    cov.diagonal().copy_(m.second_a)  # the variances (the gram diagonal is the same quantity, kept exact)
    return 0.5 * (cov + cov.T)


def consumer_metric(columns: Sequence[torch.Tensor]) -> torch.Tensor:
    """M [C, C] = sum over consumers, output channels and kernel offsets of W'[o, i, s] W'[o, j, s].

    Args:
        columns: per consumer, its weight restricted to this layer's channels and moved to [C, O, ...].
    """
    out = None
    for cols in columns:
        flat = cols.double().reshape(cols.shape[0], cols.shape[1], -1)  # [C, O, s]
        part = torch.einsum("ios,jos->ij", flat, flat)
        out = part if out is None else out + part
    return out


def greedy_prune(cov: torch.Tensor, metric: torch.Tensor, n_remove: int,
                 ridge: float = 0.001) -> Tuple[List[int], float]:
    """Grow the pruned set one channel at a time, each step adding the channel with the smallest err(P).

    Args:
        cov: [C, C] channel covariance. metric: [C, C] consumer metric M. n_remove: channels to prune.
        ridge: alpha relative to the mean variance (the same scale-free term as `closed_form.solve`).

    Returns:
        (sorted pruned indices, err(P) / tr(M Sigma), the estimated relative output error).
    """
    C = cov.shape[0]
    if not 0 <= n_remove < C:
        raise ValueError(f"compensate.select: cannot remove {n_remove} of {C} channels")
    eye = torch.eye(C, dtype=torch.float64)
    alpha = float(ridge) * float(cov.diagonal().mean().clamp_min(0.0)) + 1e-12
    precision = torch.linalg.inv(cov + alpha * eye)
    total = float((metric * cov).sum().clamp_min(1e-30))
    pruned: List[int] = []
    err = 0.0
    for _ in range(n_remove):
        cand = torch.tensor([c for c in range(C) if c not in pruned], dtype=torch.long)
        idx = torch.cat([torch.tensor(pruned, dtype=torch.long).expand(cand.numel(), -1), cand.unsqueeze(1)], 1)
        lam = precision[idx.unsqueeze(2), idx.unsqueeze(1)]  # [n, p, p]
        met = metric[idx.unsqueeze(2), idx.unsqueeze(1)]
        scores = (met * torch.linalg.inv(lam).transpose(1, 2)).sum((1, 2))
        best = int(torch.argmin(scores))
        pruned.append(int(cand[best]))
        err = float(scores[best])
    return sorted(pruned), err / total


def reselect(removed: Dict[str, torch.Tensor], layers, reference, consumer_columns, ridge: float
             ) -> Tuple[Dict[str, torch.Tensor], Dict[str, float]]:
    """Replace the plan's channels of every compensable group by the greedy choice, keeping each group's count.

    Args:
        removed: group id -> [n] long indices of the plan.
        layers: group id -> `layers.CompensableLayer`.
        reference: ``reference(layer) -> (w [C, ...], beta, gamma)``: folded original filters and the BN parameters.
        consumer_columns: ``consumer_columns(layer) -> list of [C, O, ...]`` consumer weights on the channels.
        ridge: as `greedy_prune`.

    Returns:
        (the new removed dict, group id -> estimated relative output error of the chosen set).
    """
    out, errors = dict(removed), {}
    for gid, idx in removed.items():
        lay = layers.get(gid)
        if lay is None or idx.numel() == 0:
            continue
        w, beta, gamma = reference(lay)
        cov = channel_covariance(w.flatten(1), beta, gamma)
        chosen, err = greedy_prune(cov, consumer_metric(consumer_columns(lay)), int(idx.numel()), ridge)
        out[gid] = torch.tensor(chosen, dtype=torch.long)
        errors[gid] = err
    return out, errors
