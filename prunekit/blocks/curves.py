"""Block scores, removal orders and per-layer rate-distortion curves (LPViT step 2 and 3).

Pruning the first k blocks of a layer's removal order sets dW = -W on them. The distortion of that prefix is
computed for every k at once with cumulative sums of per-block statistics (so the second-order term costs
O(blocks x batches) per layer, not O(weights^2)):

* ``"fisher"`` (default): 1/2 dW^T F dW + lambda/2 |dW|^2 with the empirical Fisher F = mean_b g_b g_b^T over the
  calibration batches; dW^T g_b is a cumulative sum of per-block sums of W * g_b, so cross-block terms are exact.
* ``"paper"``: the reference code's mean((dW * g)^2) + 1/2 dW^T (g g^T + lambda I) dW with the mean gradient g.
* ``"diag"``: the diagonal empirical Fisher, 1/2 sum over pruned weights of mean_b (w g_b)^2 + lambda/2 |dW|^2.

Orders: ``free`` removes blocks by ascending score anywhere in the matrix; ``balanced`` removes them in rounds of one
block per block-row (each row's weakest first), so prefixes whose length is a multiple of the row count keep the
same number of blocks in every row: the layout `BlockSparseLinear` runs as one batched matmul.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch

from ..errors import ConfigError
from .stats import BlockStats

SCORES = ("fisher", "taylor", "magnitude")
DISTORTIONS = ("fisher", "paper", "diag")
LAYOUTS = ("free", "balanced")
DAMP = 1e-7  # lambda_damp of the reference code


@dataclass
class LayerCurve:
    """Distortion of one layer as a function of the number of blocks removed.

    Attributes:
        param: the target weight's name.
        order: ``[n]`` flat block ids in removal order.
        distortion: ``[n + 1]``; entry k is the distortion with the first k blocks of `order` removed.
        allowed: ``[m]`` the block counts k the layout allows (multiples of R when balanced).
    """

    param: str
    order: torch.Tensor
    distortion: torch.Tensor
    allowed: torch.Tensor


def block_scores(stats: BlockStats, score: str = "fisher") -> torch.Tensor:
    """``[R, C]`` importance of each block (higher = keep).

    ``fisher``: sum over the block of mean_b (w g_b)^2 (diagonal empirical Fisher); ``taylor``: the reference
    code's mean |W * g| with the mean gradient; ``magnitude``: mean |W| (data-free).
    """
    if score == "fisher":
        return stats.diag.clone()
    if score == "taylor":
        return stats.abs_taylor / stats.target.block_numel
    if score == "magnitude":
        return stats.abs_weight / stats.target.block_numel
    raise ConfigError(f"prunekit.blocks: unknown block score '{score}'; choose one of {SCORES}")


def removal_order(scores: torch.Tensor, layout: str = "free") -> torch.Tensor:
    """Flat block ids ``[R * C]`` from first-to-remove to last.

    Args:
        scores: ``[R, C]`` block importance (higher = keep).
        layout: ``"free"`` or ``"balanced"`` (see the module docstring).
    """
    r, c = scores.shape
    if layout == "free":
        return torch.argsort(scores.flatten(), stable=True)
    if layout != "balanced":
        raise ConfigError(f"prunekit.blocks: unknown layout '{layout}'; choose one of {LAYOUTS}")
    within = torch.argsort(scores, dim=1, stable=True)  # [R, C]: each row's weakest first
    flat = (torch.arange(r)[:, None] * c + within).t()  # [C, R]: round j holds every row's j-th weakest block
    round_scores = scores.flatten()[flat]
    flat = torch.gather(flat, 1, torch.argsort(round_scores, dim=1, stable=True))
    return flat.reshape(-1)


def distortion_curve(stats: BlockStats, order: torch.Tensor, distortion: str = "fisher",
                     damp: float = DAMP) -> torch.Tensor:
    """``[n + 1]`` distortion of removing the first k blocks of `order`, for k = 0..n (incremental, blockwise)."""
    damping = 0.5 * damp * torch.cumsum(stats.sq_norm.flatten()[order].double(), 0)
    if distortion == "fisher":
        sums = stats.batch_sums.flatten(1)[:, order].double()  # [nb, n]
        body = 0.5 * torch.cumsum(sums, 1).pow(2).mean(0)
    elif distortion == "paper":
        mean_sums = stats.batch_sums.flatten(1)[:, order].double().mean(0)
        numel = stats.target.shape[0] * stats.target.shape[1]
        body = torch.cumsum(stats.sq_taylor.flatten()[order].double(), 0) / numel + 0.5 * torch.cumsum(
            mean_sums, 0).pow(2)
    elif distortion == "diag":
        body = 0.5 * torch.cumsum(stats.diag.flatten()[order].double(), 0)
    else:
        raise ConfigError(f"prunekit.blocks: unknown distortion '{distortion}'; choose one of {DISTORTIONS}")
    return torch.cat([torch.zeros(1, dtype=torch.float64), body + damping])


def layer_curve(stats: BlockStats, score: str = "fisher", distortion: str = "fisher", layout: str = "free",
                damp: float = DAMP) -> LayerCurve:
    """Order, distortion curve and allowed block counts of one layer."""
    order = removal_order(block_scores(stats, score), layout)
    rows, _ = stats.target.grid
    n = order.numel()
    step = rows if layout == "balanced" else 1
    return LayerCurve(stats.target.param, order, distortion_curve(stats, order, distortion, damp),
                      torch.arange(0, n + 1, step))


def layer_curves(stats: Dict[str, BlockStats], **options) -> Dict[str, LayerCurve]:
    """`layer_curve` for every target (same options)."""
    return {name: layer_curve(s, **options) for name, s in stats.items()}
