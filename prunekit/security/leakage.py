"""A leakage simulator of a first conv layer executed one multiply-accumulate (MAC) per time step in int8.

Model (methods.md section 6, reconstructed): weights and inputs are int8; the layer computes one output channel's
MACs in a fixed order (output position by position, then input channel, kernel row, kernel column; zero-padding MACs
do not exist); each executed MAC leaks the Hamming weight of its product's low byte, ``HW(int8(w * x))``, plus
Gaussian noise. A skipped MAC (its input pixel inactive under MACPruning) takes no time, so every later MAC moves
earlier in the trace. The trace starts at the first MAC of the simulated window (the attacker's trigger).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import ConfigError

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.float32)


def hamming_weight8(values: np.ndarray) -> np.ndarray:
    """Hamming weight of the low byte (two's complement) of integer `values`; float32, same shape."""
    return _POPCOUNT[np.asarray(values, dtype=np.int64) & 0xFF]


def quantize_int8(t: torch.Tensor) -> Tuple[np.ndarray, float]:
    """Symmetric per-tensor int8 quantisation: ``q = round(t / scale)``, ``scale = max|t| / 127``.

    Returns:
        (int64 array of the shape of `t` with values in [-127, 127], scale).
    """
    scale = float(t.detach().abs().max()) / 127.0 or 1.0
    return np.clip(np.round(t.detach().cpu().numpy() / scale), -127, 127).astype(np.int64), scale


@dataclass(frozen=True)
class LayerGeometry:
    """Shape of the first conv layer: input ``[C, H, W]``, kernel, stride, padding."""

    in_channels: int
    height: int
    width: int
    kernel: Tuple[int, int] = (3, 3)
    stride: Tuple[int, int] = (1, 1)
    padding: Tuple[int, int] = (1, 1)

    @classmethod
    def of(cls, conv: torch.nn.Conv2d, height: int, width: int) -> "LayerGeometry":
        if conv.groups != 1 or conv.dilation != (1, 1):
            raise ConfigError("security: the simulator handles ungrouped, undilated first convolutions only")
        return cls(conv.in_channels, height, width, tuple(conv.kernel_size), tuple(conv.stride), tuple(conv.padding))

    def out_hw(self) -> Tuple[int, int]:
        return ((self.height + 2 * self.padding[0] - self.kernel[0]) // self.stride[0] + 1,
                (self.width + 2 * self.padding[1] - self.kernel[1]) // self.stride[1] + 1)


@dataclass
class MacSchedule:
    """The MACs of one output channel over a window of output positions, in execution order.

    Attributes:
        pixel: ``[M]`` flat input pixel position (``y * W + x``) each MAC reads.
        tap: ``[M]`` flat weight index (``(c * kh + i) * kw + j``).
        element: ``[M]`` flat input element (``(c * H + y) * W + x``).
        position: ``[M]`` flat output position (``oy * W_out + ox``).
    """

    pixel: np.ndarray
    tap: np.ndarray
    element: np.ndarray
    position: np.ndarray

    def __len__(self) -> int:
        return len(self.pixel)

    def index_of(self, position: int, tap: int) -> int:
        """Execution index of the MAC computing `tap` at output `position`."""
        hits = np.nonzero((self.position == position) & (self.tap == tap))[0]
        if len(hits) != 1:
            raise ConfigError(f"security: output position {position} does not use weight tap {tap} inside the window "
                              f"(zero padding, or outside the simulated positions)")
        return int(hits[0])


def mac_schedule(geom: LayerGeometry, positions: Optional[Sequence[int]] = None) -> MacSchedule:
    """The execution order of one output channel's MACs at the given output positions (all when None)."""
    h_out, w_out = geom.out_hw()
    positions = range(h_out * w_out) if positions is None else positions
    kh, kw = geom.kernel
    cols = {"pixel": [], "tap": [], "element": [], "position": []}
    for pos in positions:
        oy, ox = divmod(int(pos), w_out)
        for c in range(geom.in_channels):
            for i in range(kh):
                for j in range(kw):
                    y, x = oy * geom.stride[0] - geom.padding[0] + i, ox * geom.stride[1] - geom.padding[1] + j
                    if 0 <= y < geom.height and 0 <= x < geom.width:
                        cols["pixel"].append(y * geom.width + x)
                        cols["tap"].append((c * kh + i) * kw + j)
                        cols["element"].append((c * geom.height + y) * geom.width + x)
                        cols["position"].append(int(pos))
    return MacSchedule(**{k: np.asarray(v, dtype=np.int64) for k, v in cols.items()})


def simulate_traces(weights: np.ndarray, inputs: np.ndarray, schedule: MacSchedule, active: Optional[np.ndarray],
                    sigma: float, rng: np.random.Generator, realign: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """Leakage traces of `len(inputs)` inferences.

    Args:
        weights: ``[taps]`` int8 weights of the output channel.
        inputs: ``[N, C * H * W]`` int8 inputs (known to the attacker).
        schedule: the MACs in execution order.
        active: ``[N, H * W]`` bool pixel activation maps (None: every pixel, no defence).
        sigma: standard deviation of the Gaussian noise.
        rng: numpy generator (noise).
        realign: return what an attacker who knows which MACs ran sees: each MAC's sample put back at its place in
            the undefended order (the sample of a skipped MAC is noise only).

    Returns:
        (traces ``[N, M]`` float32, executed ``[N, M]`` bool).
    """
    n, m = inputs.shape[0], len(schedule)
    leak = hamming_weight8(weights[schedule.tap][None, :] * inputs[:, schedule.element])  # [N, M]
    executed = np.ones((n, m), dtype=bool) if active is None else active[:, schedule.pixel]
    noise = rng.normal(0.0, sigma, size=(n, m)).astype(np.float32)
    if active is None or realign:
        return np.where(executed, leak, 0.0).astype(np.float32) + noise, executed
    traces = noise
    rows, cols = np.nonzero(executed)
    times = (np.cumsum(executed, axis=1) - 1)[rows, cols]  # skipped MACs take no time: executed ones pack left
    traces[rows, times] += leak[rows, cols]
    return traces, executed
