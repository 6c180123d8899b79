"""Importance of each input pixel position for MACPruning (paper 6): which pixels must always be computed.

The paper's exact rule was not retrieved (methods.md section 6: reconstructed). Two estimates over training data:

- ``saliency``: mean absolute input gradient of the loss, ``s[h, w] = E_x sum_c |dL/dx[c, h, w]|``;
- ``occlusion``: mean increase of the loss when one pixel position (all channels) is set to 0, the value a skipped
  multiply-accumulate stands for.
"""
from __future__ import annotations

from typing import Callable, Iterable, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

METHODS = ("saliency", "occlusion")


def _batches(batches: Iterable[Tuple[torch.Tensor, torch.Tensor]]):
    for batch in batches:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ConfigError("pixel importance: batches must be (images [B, C, H, W], labels [B]) pairs")
        yield batch[0], batch[1]


def _mean_per_image(model: nn.Module, batches: Iterable,
                    batch_sum: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Mean over all images of the ``[H, W]`` map `batch_sum(images, labels)` sums over a batch, with `model` in
    eval mode (its mode is restored afterwards).

    Raises:
        ConfigError: `batches` is empty or not made of ``(images, labels)`` pairs.
    """
    was_training = model.training
    model.eval()
    total, count = None, 0
    try:
        for images, target in _batches(batches):
            part = batch_sum(images, target)
            total = part if total is None else total + part
            count += images.shape[0]
    finally:
        model.train(was_training)
    if total is None:
        raise ConfigError("pixel importance: no batches given")
    return total / count


def saliency_map(model: nn.Module, batches: Iterable) -> torch.Tensor:
    """Mean absolute input-gradient saliency per pixel position.

    Args:
        model: classifier (run in eval mode; its parameters get no gradient).
        batches: ``(images [B, C, H, W], labels [B])`` pairs from the deployment distribution.

    Returns:
        ``[H, W]`` non-negative importances.
    """
    def batch_saliency(images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = images.clone().requires_grad_(True)
        loss = F.cross_entropy(model(x), target, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
        return grad.abs().sum(dim=1).sum(dim=0)

    return _mean_per_image(model, batches, batch_saliency)


@torch.no_grad()
def occlusion_map(model: nn.Module, batches: Iterable) -> torch.Tensor:
    """Mean loss increase when a single pixel position is zeroed (all channels).

    Cost: one forward per pixel position and batch (H * W forwards).

    Returns:
        ``[H, W]`` importances (clamped at 0).
    """
    def batch_occlusion(images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        base = F.cross_entropy(model(images), target, reduction="sum")
        h, w = images.shape[-2:]
        part = torch.zeros(h, w)
        for i in range(h):
            for j in range(w):
                x = images.clone()
                x[:, :, i, j] = 0
                part[i, j] = F.cross_entropy(model(x), target, reduction="sum") - base
        return part

    return _mean_per_image(model, batches, batch_occlusion).clamp_min(0)


def pixel_importance(model: nn.Module, batches: Iterable, method: str = "saliency") -> torch.Tensor:
    """`saliency_map` or `occlusion_map` by name."""
    if method == "saliency":
        return saliency_map(model, batches)
    if method == "occlusion":
        return occlusion_map(model, batches)
    raise ConfigError(f"pixel importance: method must be one of {METHODS}, got {method!r}")
