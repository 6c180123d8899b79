"""Calibration statistics for block scores and distortion curves: one pass of gradients over calibration batches.

For every target weight W ``[out, in]`` and calibration batch b with gradient g_b = dL_b/dW, this keeps only
block-level sums (never a per-batch copy of a gradient), so memory stays at one gradient-sized buffer per weight:

* ``grad_mean`` ``[out, in]``: the mean gradient g = mean_b g_b (the reference code's accumulated gradient);
* ``batch_sums`` ``[nb, R, C]``: sum over each block of W * g_b, per batch (the rank-nb empirical Fisher term);
* ``diag`` ``[R, C]``: sum over batches and over each block of (W * g_b)^2 (the diagonal empirical Fisher);
* ``sq_norm`` ``[R, C]``: sum over each block of W^2 (the damping term);
* ``abs_taylor`` / ``sq_taylor`` ``[R, C]``: sums of |W * g| and (W * g)^2 with the mean gradient (reference code);
* ``abs_weight`` ``[R, C]``: sum of |W| (magnitude score).

The loss is either a task loss (labels exist) or the label-free surrogate of LPViT, the output energy mean(f(x)^2)
(`output_energy`).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..metrics.accuracy import logits_of
from .layout import BlockTarget, block_sums, parameter

LossFn = Callable[[nn.Module, Any], torch.Tensor]


@dataclass
class BlockStats:
    """Calibration statistics of one target (shapes in the module docstring)."""

    target: BlockTarget
    grad_mean: torch.Tensor
    batch_sums: torch.Tensor
    diag: torch.Tensor
    sq_norm: torch.Tensor
    abs_taylor: torch.Tensor
    sq_taylor: torch.Tensor
    abs_weight: torch.Tensor


def output_energy(model: nn.Module, batch: Any) -> torch.Tensor:
    """LPViT's label-free surrogate: mean of the squared model output (logits, or the first output tensor).

    Args:
        batch: a tensor (positional input) or a dict of keyword inputs.
    """
    out = model(**batch) if isinstance(batch, dict) else model(batch)
    if not isinstance(out, torch.Tensor) and not hasattr(out, "logits") and hasattr(out, "to_tuple"):
        out = out.to_tuple()  # a Hugging Face output without logits (an encoder): its first tensor
    return logits_of(out).float().pow(2).mean()


@contextlib.contextmanager
def _only_targets_trainable(model: nn.Module, names: Sequence[str]) -> Iterator[List[torch.Tensor]]:
    """Gradients for the target weights only (saves the backward through everything else); restores flags."""
    saved = {n: p.requires_grad for n, p in model.named_parameters()}
    wanted = set(names)
    try:
        for n, p in model.named_parameters():
            p.requires_grad_(n in wanted)
        yield [parameter(model, n) for n in names]
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(saved[n])
            p.grad = None


def collect_block_stats(model: nn.Module, targets: Sequence[BlockTarget], batches: Iterable[Any],
                        loss_fn: Optional[LossFn] = None, progress: bool = False) -> Dict[str, BlockStats]:
    """Run `loss_fn` on each calibration batch and gather the block statistics of every target.

    Args:
        model: the unpruned model (kept in its current train/eval mode; eval is usual).
        targets: from `find_targets`.
        batches: calibration batches (each as `loss_fn` expects it).
        loss_fn: ``loss_fn(model, batch) -> scalar``; default `output_energy`.
        progress: show a rich progress bar.

    Returns:
        target param name -> `BlockStats`.
    """
    loss_fn = loss_fn or output_energy
    names = [t.param for t in targets]
    grad_sum = {n: None for n in names}
    per_batch: Dict[str, List[torch.Tensor]] = {n: [] for n in names}
    diag = {n: None for n in names}
    from rich.progress import Progress

    with _only_targets_trainable(model, names) as params, Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task("block calibration", total=None)
        for batch in batches:
            for p in params:
                p.grad = None
            loss = loss_fn(model, batch)
            if not torch.isfinite(loss):
                raise ConfigError(f"prunekit.blocks.collect_block_stats: the calibration loss is {loss.item()}")
            loss.backward()
            with torch.no_grad():
                for t, p in zip(targets, params):
                    g = p.grad if p.grad is not None else torch.zeros_like(p)
                    wg = p.detach() * g
                    grad_sum[t.param] = g.clone() if grad_sum[t.param] is None else grad_sum[t.param].add_(g)
                    per_batch[t.param].append(block_sums(wg, t.block))
                    d = block_sums(wg * wg, t.block)
                    diag[t.param] = d if diag[t.param] is None else diag[t.param].add_(d)
            bar.advance(task)
    n = len(per_batch[names[0]])
    if n == 0:
        raise ConfigError("prunekit.blocks.collect_block_stats: no calibration batches were given")
    stats = {}
    with torch.no_grad():
        for t in targets:
            w = parameter(model, t.param).detach()
            g = grad_sum[t.param] / n
            stats[t.param] = BlockStats(
                target=t, grad_mean=g, batch_sums=torch.stack(per_batch[t.param]), diag=diag[t.param] / n,
                sq_norm=block_sums(w * w, t.block), abs_taylor=block_sums((w * g).abs(), t.block),
                sq_taylor=block_sums((w * g) ** 2, t.block), abs_weight=block_sums(w.abs(), t.block))
    return stats


def weight_stats(model: nn.Module, targets: Sequence[BlockTarget]) -> Dict[str, BlockStats]:
    """Data-free statistics (magnitude only): every gradient term is zero, so only magnitude scoring applies."""
    stats = {}
    with torch.no_grad():
        for t in targets:
            w = parameter(model, t.param).detach()
            r, c = t.grid
            zeros = torch.zeros(r, c)
            stats[t.param] = BlockStats(t, torch.zeros_like(w), zeros[None], zeros, block_sums(w * w, t.block),
                                        zeros, zeros, block_sums(w.abs(), t.block))
    return stats
