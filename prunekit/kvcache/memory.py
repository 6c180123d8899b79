"""Memory figures that count everything a compressed cache keeps alive, and where it breaks even.

A compressed cache costs, for ``B`` sequences of ``n`` tokens::

    bytes(n, B) = fixed + B * (per_sequence + per_token * n)

* ``fixed``: what the press holds whatever the batch or length (CSKV's factors; ThinK holds nothing);
* ``per_sequence``: what each sequence holds whatever its length (channel indices, the full-precision sink and
  window of CSKV, quantisation scales of a partly filled block);
* ``per_token``: the slope.

The full cache costs ``B * full_per_token * n``. The compressed cache is smaller from the *break-even* length
``n* = (fixed + B * per_sequence) / (B * (full_per_token - per_token))`` on. All three are fitted from real storage
byte counts (`prunekit.kvcache.base.cache_nbytes`) at two or more lengths, never from a formula, and can be read
for an fp32 model (as measured) or an fp16 one (float32 tensors counted at 2 bytes; codes, indices and fp16 scales
as they are).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Optional

import torch

from ..errors import ConfigError
from .base import storage_nbytes


def nbytes_as(tensors, float_bytes: Optional[int] = None) -> int:
    """Deduplicated storage bytes of `tensors`; with `float_bytes`, float32/float64 storages are counted at that
    many bytes per element (what an fp16 model would store)."""
    seen, total = set(), 0
    for tensor in tensors:
        if tensor is None:
            continue
        storage = tensor.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if key in seen:
            continue
        seen.add(key)
        size = storage.nbytes()
        if float_bytes is not None and tensor.dtype in (torch.float32, torch.float64):
            size = size // tensor.element_size() * float_bytes
        total += size
    return total


def cache_nbytes_as(cache, float_bytes: Optional[int] = None) -> int:
    """`prunekit.kvcache.base.cache_nbytes`, optionally with float tensors counted at `float_bytes`."""
    from . import hf_compat

    return nbytes_as([t for layer in cache.layers for t in hf_compat.layer_tensors(layer)], float_bytes)


def press_fixed_nbytes(press, float_bytes: Optional[int] = None) -> int:
    """Bytes a press keeps alive besides the cache (CSKV's factors; 0 for presses that hold nothing)."""
    if hasattr(press, "fixed_tensors"):
        return nbytes_as(press.fixed_tensors(), float_bytes)
    factors = getattr(press, "factors", None)
    if factors is None or not hasattr(factors, "layers"):
        return 0
    return nbytes_as([t for layer in factors.layers for t in layer.values()], float_bytes)


@dataclass
class MemoryProfile:
    """Fitted costs of one cache layout, in bytes (see the module docstring)."""

    fixed: float
    per_sequence: float
    per_token: float
    full_per_token: float

    def total(self, tokens: int, batch: int = 1) -> float:
        return self.fixed + batch * (self.per_sequence + self.per_token * tokens)

    def full(self, tokens: int, batch: int = 1) -> float:
        return batch * self.full_per_token * tokens

    def ratio(self, tokens: int, batch: int = 1) -> float:
        """Everything kept alive, as a fraction of the full cache."""
        return self.total(tokens, batch) / self.full(tokens, batch)

    def break_even(self, batch: int = 1) -> float:
        """Context length from which the compressed cache (fixed bytes included) is smaller; inf if never."""
        gain = batch * (self.full_per_token - self.per_token)
        if gain <= 0:
            return math.inf
        return max(0.0, (self.fixed + batch * self.per_sequence) / gain)

    def as_dict(self) -> Dict[str, float]:
        out = asdict(self)
        out.update(break_even_b1=self.break_even(1), break_even_b8=self.break_even(8))
        return out


def fit_profile(bytes_at: Dict[int, float], full_at: Dict[int, float], fixed: float) -> MemoryProfile:
    """Least-squares line through ``{tokens: bytes}`` (batch 1) for the compressed and the full cache.

    Raises:
        ConfigError: fewer than two lengths.
    """
    if len(bytes_at) < 2 or len(full_at) < 2:
        raise ConfigError("kvcache.memory.fit_profile needs byte counts at two or more context lengths")

    def line(points):
        xs, ys = list(points), [float(points[x]) for x in points]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
        return slope, my - slope * mx

    per_token, per_sequence = line(bytes_at)
    full_per_token, _ = line(full_at)
    return MemoryProfile(float(fixed), per_sequence, per_token, full_per_token)


__all__ = ["MemoryProfile", "cache_nbytes_as", "fit_profile", "nbytes_as", "press_fixed_nbytes"]
