"""Per-layer timing grids cached on disk: one file per (hardware, runtime, dtype, threads, versions), one entry
per layer signature (which includes its input shape); grids are made monotone and interpolated bilinearly."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from .latency_timer import LayerCall, Timer

DEFAULT_FRACTIONS = (0.25, 0.5, 0.75, 1.0)
TABLE_VERSION = 2  # 2: fastest sample per point, monotone by running minima


class LatencyTable:
    """Per-layer timing grids on one runtime, cached on disk.

    Args:
        timer: the `Timer` that measures missing entries.
        cache_dir: folder of the cache files (default ``<prunekit cache>/latency``); None entries are kept in
            memory only when `cache_dir` is ``False``.
        fractions: widths timed, as fractions of each channel count.
    """

    def __init__(self, timer: Timer, cache_dir: Any = None, fractions: Sequence[float] = DEFAULT_FRACTIONS):
        from ..paths import cache_root

        self.timer, self.fractions = timer, tuple(fractions)
        if cache_dir is None:
            cache_dir = cache_root() / "latency"
        self.path = None
        if cache_dir is not False:
            key = json.dumps([TABLE_VERSION, timer.hardware(), timer.runtime, str(timer.dtype), timer.threads,
                              timer.versions()])
            self.path = Path(cache_dir) / f"{timer.runtime}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
        self.entries: Dict[str, Dict[str, Any]] = {}
        self.measured = 0
        if self.path is not None and self.path.exists():
            try:
                self.entries = json.loads(self.path.read_text()).get("entries", {})
            except (json.JSONDecodeError, AttributeError):
                self.entries = {}  # a damaged cache is remeasured, never trusted

    def grid(self, layer: LayerCall) -> Dict[str, Any]:
        """{"out": widths, "in": widths, "ms": [len(out)][len(in)]} for the layer, measured when not cached."""
        outs, ins = layer.grid(self.fractions)
        key = f"{layer.signature()}|{outs}|{ins}"
        if key not in self.entries:
            ms = self.timer.grid_ms(layer, outs, ins) if layer.kind != "other" else [[float("nan")]]
            self.entries[key] = {"out": outs, "in": ins, "ms": _monotone(ms)}
            self.measured += len(outs) * len(ins)
        return self.entries[key]

    def save(self) -> None:
        """Write the table (atomically) when it has a cache path."""
        if self.path is None:
            return
        from ..io import atomic_write_text

        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps({"version": TABLE_VERSION, "hardware": self.timer.hardware(),
                                                 "runtime": self.timer.runtime, "dtype": str(self.timer.dtype),
                                                 "threads": self.timer.threads, "entries": self.entries}))


def _monotone(ms: List[List[float]]) -> List[List[float]]:
    """Make a grid non-decreasing in both widths (a wider layer never costs less) by running minima from the widest
    point down: timing noise only adds time, so a point above a wider one is noise and is lowered to it. (Running
    maxima upward would instead carry one noisy narrow point into every wider one.)"""
    out = [list(row) for row in ms]
    for i in reversed(range(len(out))):
        for j in reversed(range(len(out[i]))):
            best = out[i][j]
            if i + 1 < len(out):
                best = min(best, out[i + 1][j])
            if j + 1 < len(out[i]):
                best = min(best, out[i][j + 1])
            out[i][j] = best
    return out


def interpolate(grid: Dict[str, Any], out_c: float, in_c: float) -> float:
    """Bilinear interpolation of a layer grid at (out_c, in_c) channels, clamped to the grid's range."""
    def locate(widths: List[int], c: float) -> Tuple[int, int, float]:
        if len(widths) == 1 or c <= widths[0]:
            return 0, 0, 0.0
        if c >= widths[-1]:
            return len(widths) - 1, len(widths) - 1, 0.0
        hi = next(k for k, w in enumerate(widths) if w >= c)
        lo = hi - 1
        return lo, hi, (c - widths[lo]) / (widths[hi] - widths[lo])

    o0, o1, a = locate(grid["out"], out_c)
    i0, i1, b = locate(grid["in"], in_c)
    ms = grid["ms"]
    top = ms[o0][i0] * (1 - b) + ms[o0][i1] * b
    bottom = ms[o1][i0] * (1 - b) + ms[o1][i1] * b
    return top * (1 - a) + bottom * a
