"""Measured rate-distortion curves: prune one layer at a time to a few amounts and measure the output change.

The Taylor curves of `prunekit.blocks.curves` extrapolate from gradients at the dense weights, which is accurate for
small removals and can badly under-estimate large ones (a layer whose first blocks look free then loses nearly
all of them). The rate-distortion pruning that LPViT builds on measures instead: for each layer and each amount on a
grid, zero that layer's first k blocks (in its removal order) with every other layer dense, run the calibration
inputs and record the mean squared change of the model output. Between grid points the curve is interpolated
linearly; it is made non-decreasing. Cost: layers x grid forward passes on the measurement batches.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence

import torch
from torch import nn

from ..metrics.accuracy import logits_of
from .curves import LayerCurve
from .layout import BlockTarget, element_mask, parameter

OutputFn = Callable[[nn.Module, Any], torch.Tensor]


def model_output(model: nn.Module, batch: Any) -> torch.Tensor:
    """The model's output tensor for a batch (a tensor, a dict of keyword inputs, or ``(inputs, labels)``)."""
    inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
    out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    if not isinstance(out, torch.Tensor) and not hasattr(out, "logits") and hasattr(out, "to_tuple"):
        out = out.to_tuple()
    return logits_of(out).float()


def measured_curves(model: nn.Module, targets: Sequence[BlockTarget], curves: Dict[str, LayerCurve],
                    batches: Sequence[Any], output_fn: Optional[OutputFn] = None, grid: int = 6,
                    progress: bool = False) -> Dict[str, LayerCurve]:
    """Replace the distortion of each `curves` entry by a measured one (same order and allowed counts).

    Args:
        model: the dense model (restored exactly afterwards).
        targets: the layers to measure.
        curves: their Taylor curves (only ``order`` and ``allowed`` are used).
        batches: measurement inputs (one or two calibration batches are enough).
        output_fn: ``output_fn(model, batch) -> tensor`` whose change is measured; default `model_output`.
        grid: amounts measured per layer, evenly spaced in (0, 1] of the allowed counts.
        progress: show a rich progress bar.

    Returns:
        param -> `LayerCurve` with the measured, interpolated distortion ``[n + 1]``.
    """
    output_fn = output_fn or model_output
    from rich.progress import Progress

    out = {}
    with torch.no_grad(), Progress(transient=True, disable=not progress) as bar:
        reference = [output_fn(model, b) for b in batches]
        task = bar.add_task("measured curves", total=len(targets))
        for t in targets:
            curve = curves[t.param]
            allowed = curve.allowed
            picks = sorted({int(allowed[min(len(allowed) - 1, round(i * (len(allowed) - 1) / grid))])
                            for i in range(1, grid + 1)})
            weight = parameter(model, t.param)
            saved = weight.detach().clone()
            points = [(0, 0.0)]
            for k in picks:
                weight.mul_(element_mask(curve.order[:k], t).to(weight))
                err = sum(float((output_fn(model, b) - ref).pow(2).mean()) for b, ref in zip(batches, reference))
                points.append((k, err / len(batches)))
                weight.copy_(saved)
            ks = torch.tensor([p[0] for p in points], dtype=torch.float64)
            ds = torch.cummax(torch.tensor([p[1] for p in points], dtype=torch.float64), 0).values
            steps = torch.arange(curve.order.numel() + 1, dtype=torch.float64)
            distortion = _interp(steps, ks, ds)
            out[t.param] = LayerCurve(t.param, curve.order, distortion, allowed)
            bar.advance(task)
    return out


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation of (xp, fp) at x (xp increasing; constant beyond the last point)."""
    idx = torch.clamp(torch.searchsorted(xp, x, right=True) - 1, 0, len(xp) - 2)
    x0, x1, f0, f1 = xp[idx], xp[idx + 1], fp[idx], fp[idx + 1]
    frac = torch.clamp((x - x0) / torch.clamp(x1 - x0, min=1e-12), 0.0, 1.0)
    return f0 + frac * (f1 - f0)
