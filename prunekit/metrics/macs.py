"""Multiply-accumulate counts: measured with ``torch.utils.flop_counter.FlopCounterMode`` and analytic formulas.

FlopCounterMode counts 2 FLOPs per multiply-add of matmuls and convolutions (bias additions, normalisation and
activations are not counted), so MACs = FLOPs / 2.
"""
from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import torch

from ..errors import ConfigError


def count_macs(model: torch.nn.Module, *inputs: Any, **kwargs: Any) -> int:
    """MACs of one forward ``model(*inputs, **kwargs)`` (matmuls and convolutions), via FlopCounterMode.

    Args:
        model: the module, run as it is (its train/eval mode is left unchanged) under ``torch.no_grad``.
        inputs: positional inputs, e.g. images ``[B, C, H, W]``; MACs scale with the batch size B.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused encoder path hides its matmuls from the counter
    try:
        with torch.no_grad(), counter:
            model(*inputs, **kwargs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return int(counter.get_total_flops()) // 2


def batch_size_of(inputs: Any) -> int:
    """The leading dimension of the first tensor in `inputs` (a tensor, tuple or dict); 1 when there is none."""
    if isinstance(inputs, torch.Tensor):
        return int(inputs.shape[0]) if inputs.dim() else 1
    values = inputs.values() if isinstance(inputs, dict) else inputs if isinstance(inputs, (tuple, list)) else ()
    for v in values:
        if isinstance(v, torch.Tensor) and v.dim():
            return int(v.shape[0])
    return 1


def macs_per_example(model: torch.nn.Module, inputs: Any) -> int:
    """MACs of one forward divided by the batch size: the figure every report shows, whatever batch measured it.

    Args:
        inputs: a tensor ``[B, ...]`` (passed positionally), a tuple of positional tensors, or a dict of keyword
            tensors; B is the first tensor's leading dimension.
    """
    if isinstance(inputs, dict):
        total = count_macs(model, **inputs)
    elif isinstance(inputs, (tuple, list)):
        total = count_macs(model, *inputs)
    else:
        total = count_macs(model, inputs)
    return total // max(1, batch_size_of(inputs))


def macs_by_module(model: torch.nn.Module, *inputs: Any) -> Dict[str, int]:
    """MACs of one forward per module (FlopCounterMode's hierarchy; parents include their children)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(*inputs)
    return {name: int(sum(ops.values())) // 2 for name, ops in counter.get_flop_counts().items()}


def conv2d_macs(in_channels: int, out_channels: int, kernel: Tuple[int, int], out_hw: Tuple[int, int],
                groups: int = 1) -> int:
    """MACs of a 2-D convolution for one image: ``H_out * W_out * C_out * (C_in / groups) * k_h * k_w``."""
    if in_channels % groups or out_channels % groups:
        raise ConfigError(f"prunekit.metrics.macs: channels {in_channels}->{out_channels} not divisible by {groups}")
    return out_hw[0] * out_hw[1] * out_channels * (in_channels // groups) * kernel[0] * kernel[1]


def linear_macs(in_features: int, out_features: int, tokens: int = 1) -> int:
    """MACs of a linear layer over `tokens` rows: ``tokens * in_features * out_features``."""
    return tokens * in_features * out_features


def analytic_resnet_cifar_macs(depth: int, option: str = "A", num_classes: int = 10, image_size: int = 32,
                               widths: Sequence[int] = (16, 32, 64), batch: int = 1) -> int:
    """MACs of the CIFAR ResNet of He et al. (2016), counting its convolutions and the final linear layer.

    Layout: a 3x3 stem conv (3 -> widths[0]); three stages of ``n = (depth - 2) / 6`` basic blocks (two 3x3 convs),
    the first block of stages 2 and 3 using stride 2; global average pooling; linear (widths[-1] -> classes).
    Option A shortcuts (subsample + zero padding) cost nothing; option B adds a 1x1 stride-2 conv where the shape
    changes. Batch norm, ReLU, pooling and additions are not counted, matching FlopCounterMode.
    """
    if (depth - 2) % 6 or depth < 8:
        raise ConfigError(f"prunekit.metrics.macs: CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
    if option not in ("A", "B"):
        raise ConfigError(f"prunekit.metrics.macs: option must be 'A' or 'B', got '{option}'")
    blocks = (depth - 2) // 6
    size, c_in = image_size, widths[0]
    total = conv2d_macs(3, widths[0], (3, 3), (size, size))
    for stage, width in enumerate(widths):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            size_out = (size - 1) // stride + 1
            total += conv2d_macs(c_in, width, (3, 3), (size_out, size_out))
            total += conv2d_macs(width, width, (3, 3), (size_out, size_out))
            if option == "B" and (stride != 1 or c_in != width):
                total += conv2d_macs(c_in, width, (1, 1), (size_out, size_out))
            size, c_in = size_out, width
    total += linear_macs(widths[-1], num_classes)
    return batch * total
