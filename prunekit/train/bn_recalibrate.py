"""Re-estimate BatchNorm running statistics for a model's current weights.

BatchNorm's running mean and variance are an exponential average over the last training steps (momentum 0.1: the
last ~20 batches weigh most). While the weights still move fast (a short fine-tune after pruning, or a strong
distillation term) those averages describe weights the model no longer has, and eval-mode accuracy falls far below
what the weights can give. Re-estimating them once, as the exact average over a few thousand training images with the
final weights, removes that lag (the same step as EagleEye's "adaptive BN", applied after fine-tuning).
"""
from __future__ import annotations

from typing import Iterable, Union

import torch
from torch import nn

BATCHNORMS = (nn.modules.batchnorm._BatchNorm,)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: Union[torch.Tensor, Iterable[torch.Tensor]],
                          batch_size: int = 128) -> int:
    """Replace every BatchNorm's running statistics by their average over `images`, in place.

    Only the BatchNorm layers run in training mode (dropout and the like stay in eval mode); weights are unchanged.
    Each layer's momentum is restored afterwards and the model is left in eval mode.

    Args:
        model: the model (on the device of `images`).
        images: a tensor [N, ...] (split into `batch_size` chunks) or an iterable of input batches.
        batch_size: chunk size when `images` is a tensor.

    Returns:
        the number of BatchNorm layers re-estimated (0: nothing to do, the model is unchanged).
    """
    norms = [m for m in model.modules() if isinstance(m, BATCHNORMS) and m.track_running_stats]
    if not norms:
        return 0
    batches = images.split(batch_size) if isinstance(images, torch.Tensor) else images
    momenta = [m.momentum for m in norms]
    model.eval()
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over every batch seen
            m.train()
        for batch in batches:
            model(batch)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
            m.eval()
    return len(norms)
