"""Per-output-channel symmetric uniform quantization of a weight tensor.

A row w (all weights of output channel j) becomes integers q = round(w / scale) clipped to [-(2^(b-1) - 1),
2^(b-1) - 1] with scale = max|w| / (2^(b-1) - 1): zero stays exactly zero (pruned or masked weights survive) and
no zero point is stored.
"""
from __future__ import annotations

from typing import Tuple

import torch

from ..errors import ConfigError

SUPPORTED_BITS = (2, 3, 4, 5, 6, 7, 8)


def check_bits(bits: int) -> int:
    """`bits` as an int in 2..8, or a `ConfigError`."""
    if int(bits) != bits or int(bits) not in SUPPORTED_BITS:
        raise ConfigError(f"quantization: bits must be an integer in 2..8, got {bits!r}")
    return int(bits)


def quantize_per_channel(weight: torch.Tensor, bits: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Quantize along dim 0.

    Args:
        weight: [C_out, ...] float weights.
        bits: 2..8.

    Returns:
        (q int8 [C_out, ...], scale float32 [C_out]); ``q * scale`` (broadcast over dim 0) is the dequantised weight.
    """
    bits = check_bits(bits)
    qmax = 2 ** (bits - 1) - 1
    w = weight.detach().float()
    peak = w.reshape(w.shape[0], -1).abs().amax(1)
    scale = torch.where(peak > 0, peak / qmax, torch.ones_like(peak))
    q = torch.round(w / scale.view(-1, *([1] * (w.dim() - 1)))).clamp_(-qmax, qmax).to(torch.int8)
    return q, scale


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Float weights ``q * scale`` ([C_out, ...] float32)."""
    return q.float() * scale.float().view(-1, *([1] * (q.dim() - 1)))


def quantize_tensor_(weight: torch.Tensor, bits: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Replace `weight` in place by its dequantised per-channel quantization; returns (q, scale)."""
    q, scale = quantize_per_channel(weight, bits)
    with torch.no_grad():
        weight.copy_(dequantize(q, scale).to(weight.dtype))
    return q, scale
