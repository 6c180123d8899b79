"""Asymmetric min-max group quantisation (8 or 4 bits) with real packed storage.

Codes are stored as ``uint8``; with 4 bits two codes share one byte (low nibble = even channel, high nibble = odd
channel), so a 4-bit tensor really occupies half a byte per value plus its group scales. Each group stores a float16
scale and a float16 minimum. Groups run either along the last (channel) axis, one set per token (``axis=-1``, KIVI's
per-token value quantisation), or along the token axis, one set per channel and block of ``group_size`` tokens
(``axis=-2``, KIVI's per-channel key quantisation).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import List

import torch

from ..errors import ConfigError

SUPPORTED_BITS = (4, 8)


def _check(bits: int, group_size: int, axis: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise ConfigError(f"prunekit.kvcache.quant: bits must be one of {SUPPORTED_BITS}, got {bits}")
    if group_size < 1:
        raise ConfigError(f"prunekit.kvcache.quant: group_size must be >= 1, got {group_size}")
    if axis not in (-1, -2):
        raise ConfigError(f"prunekit.kvcache.quant: axis must be -1 (channels) or -2 (tokens), got {axis}")


def _group_min_max(x: torch.Tensor, group: int, axis: int):
    """Per-group minimum and maximum: ``[..., T, ceil(C/g)]`` (axis -1) or ``[..., T/g, C]`` (axis -2)."""
    if axis == -1:
        channels = x.shape[-1]
        n_groups = math.ceil(channels / group)
        pad = n_groups * group - channels
        if pad:  # replicate the last channel: it changes no group's minimum or maximum
            x = torch.cat([x, x[..., -1:].expand(*x.shape[:-1], pad)], dim=-1)
        grouped = x.reshape(*x.shape[:-1], n_groups, group)
        return grouped.amin(-1), grouped.amax(-1)
    tokens = x.shape[-2]
    if tokens % group:
        raise ConfigError(f"prunekit.kvcache.quant: {tokens} tokens is not a multiple of the token group {group}")
    grouped = x.reshape(*x.shape[:-2], tokens // group, group, x.shape[-1])
    return grouped.amin(-2), grouped.amax(-2)


def _expand(stat: torch.Tensor, shape, group: int, axis: int) -> torch.Tensor:
    """Broadcast a per-group statistic back to the full ``[..., T, C]`` shape."""
    if axis == -1:
        return stat.repeat_interleave(group, dim=-1)[..., : shape[-1]]
    return stat.repeat_interleave(group, dim=-2)


@dataclass
class QuantizedTensor:
    """A quantised ``[..., T, C]`` tensor.

    Attributes:
        codes: ``uint8 [..., T, ceil(C/2)]`` for 4 bits (two codes per byte), ``[..., T, C]`` for 8 bits.
        scale / minimum: float16 group statistics (see `_group_min_max` for their shapes).
        bits, group_size, axis: the quantisation layout. channels: ``C``.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    minimum: torch.Tensor
    bits: int
    group_size: int
    axis: int
    channels: int

    @property
    def tokens(self) -> int:
        return self.codes.shape[-2]

    def tensors(self) -> List[torch.Tensor]:
        return [self.codes, self.scale, self.minimum]

    def nbytes(self) -> int:
        return sum(t.untyped_storage().nbytes() for t in self.tensors())

    def index_batch(self, indices: torch.Tensor) -> "QuantizedTensor":
        pick = lambda t: t.index_select(0, indices.to(t.device))  # noqa: E731
        return replace(self, codes=pick(self.codes), scale=pick(self.scale), minimum=pick(self.minimum))

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The ``[..., T, C]`` tensor the codes stand for."""
        codes = self.codes
        if self.bits == 4:
            low, high = codes & 0x0F, codes >> 4
            codes = torch.stack([low, high], dim=-1).reshape(*codes.shape[:-1], -1)[..., : self.channels]
        shape = codes.shape
        scale = _expand(self.scale, shape, self.group_size, self.axis).to(dtype)
        minimum = _expand(self.minimum, shape, self.group_size, self.axis).to(dtype)
        return codes.to(dtype) * scale + minimum


def _codes_and_stats(x: torch.Tensor, bits: int, group_size: int, axis: int):
    levels = (1 << bits) - 1
    low, high = _group_min_max(x.float(), group_size, axis)
    scale = ((high - low) / levels).half()
    minimum = low.half()
    safe = torch.where(scale > 0, scale.float(), torch.ones_like(scale.float()))
    full_scale = _expand(safe, x.shape, group_size, axis)
    full_min = _expand(minimum.float(), x.shape, group_size, axis)
    codes = ((x.float() - full_min) / full_scale).round().clamp_(0, levels)
    return codes, scale, minimum


def quantize(x: torch.Tensor, bits: int, group_size: int, axis: int = -1) -> QuantizedTensor:
    """Quantise ``x [..., T, C]`` to `bits` with groups of `group_size` along `axis` (-1 channels, -2 tokens)."""
    _check(bits, group_size, axis)
    codes, scale, minimum = _codes_and_stats(x, bits, group_size, axis)
    codes = codes.to(torch.uint8)
    channels = x.shape[-1]
    if bits == 4:
        if channels % 2:
            codes = torch.cat([codes, torch.zeros_like(codes[..., :1])], dim=-1)
        codes = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return QuantizedTensor(codes.contiguous(), scale.contiguous(), minimum.contiguous(), bits, group_size, axis,
                           channels)


def cat_tokens(first: QuantizedTensor, second: QuantizedTensor) -> QuantizedTensor:
    """Concatenate two quantised tensors along the token axis (same layout required)."""
    if (first.bits, first.group_size, first.axis, first.channels) != (
            second.bits, second.group_size, second.axis, second.channels):
        raise ConfigError("prunekit.kvcache.quant.cat_tokens: the two tensors have different layouts")
    return replace(first, codes=torch.cat([first.codes, second.codes], dim=-2),
                   scale=torch.cat([first.scale, second.scale], dim=-2),
                   minimum=torch.cat([first.minimum, second.minimum], dim=-2))


def fake_quantize(x: torch.Tensor, bits: int, group_size: int, axis: int = -1) -> torch.Tensor:
    """Quantise-dequantise with a straight-through gradient (for quantisation-aware training)."""
    _check(bits, group_size, axis)
    codes, scale, minimum = _codes_and_stats(x.detach(), bits, group_size, axis)
    deq = codes * _expand(scale.float(), x.shape, group_size, axis) + _expand(minimum.float(), x.shape, group_size,
                                                                              axis)
    return x + (deq.to(x.dtype) - x).detach()
