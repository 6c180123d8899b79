"""A measured latency cost for block allocation: time `BlockSparseLinear` at a few sparsities, interpolate.

For each distinct (weight shape, block) the table holds the median time of the dense ``nn.Linear`` and of a
balanced `BlockSparseLinear` keeping K blocks per row for a handful of K, on ``tokens`` input rows at a fixed thread
count. ``cost(target, kept_blocks)`` is ``min(dense, interpolated sparse)`` in milliseconds: a layer where the
sparse kernel would be slower stays dense (`keep_dense` says which), so the allocation sees that low sparsity buys
no time. Tables are cached as JSON under ``prunekit.paths.cache_root()/blocks`` keyed by CPU capability, torch
version, threads, tokens and the shapes; a fresh measurement is taken when any of these changes.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from ..errors import ConfigError
from ..io import atomic_write_text
from ..metrics.latency import median_call_ms, torch_threads
from ..paths import cache_root
from .layout import BlockShape, BlockTarget
from .module import BlockSparseLinear

DENSITIES = (1 / 16, 1 / 8, 1 / 4, 3 / 8, 1 / 2, 5 / 8, 3 / 4, 1.0)


def time_layer(shape: Tuple[int, int], block: BlockShape, tokens: int, kept_per_row: Sequence[int],
               repeats: int = 15, seed: int = 0) -> Dict[str, object]:
    """Median ms of a dense linear and of balanced block-sparse ones (random kept blocks) of `shape` on `tokens`.

    Returns:
        ``{"dense": ms, "sparse": {K: ms}}``.
    """
    out, inp = shape
    gen = torch.Generator().manual_seed(seed)
    linear = nn.Linear(inp, out)
    x = torch.randn(tokens, inp, generator=gen)
    rows, cols = out // block.rows, inp // block.cols
    result = {"dense": 0.0, "sparse": {}}
    with torch.inference_mode():
        result["dense"] = median_call_ms(lambda: linear(x), 3, repeats)
        for k in kept_per_row:
            keep = torch.zeros(rows, cols, dtype=torch.bool)
            for r in range(rows):
                keep[r, torch.randperm(cols, generator=gen)[:k]] = True
            module = BlockSparseLinear.from_linear(linear, keep, block)
            result["sparse"][int(k)] = median_call_ms(lambda: module(x), 3, repeats)
    return result


@dataclass
class LatencyTable:
    """Measured per-layer latency (ms) keyed by ``"OUTxIN@BLOCK"``; see the module docstring."""

    tokens: int
    threads: int
    entries: Dict[str, Dict[str, object]] = field(default_factory=dict)

    @staticmethod
    def key(target: BlockTarget) -> str:
        return f"{target.shape[0]}x{target.shape[1]}@{target.block}"

    def sparse_ms(self, target: BlockTarget, kept_blocks: int) -> float:
        """Interpolated time of the block-sparse layer keeping `kept_blocks` (as kept blocks per row)."""
        entry = self.entries.get(self.key(target))
        if entry is None:
            raise ConfigError(f"prunekit.blocks.LatencyTable: no timings for '{target.param}' ({self.key(target)}); "
                              f"measure it first")
        rows, _ = target.grid
        per_row = kept_blocks / rows
        points = sorted((int(k), float(v)) for k, v in entry["sparse"].items())
        xs, ys = [0.0] + [p[0] for p in points], [0.0] + [p[1] for p in points]
        for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
            if per_row <= x1:
                return y0 + (y1 - y0) * (per_row - x0) / max(x1 - x0, 1e-12)
        return ys[-1]

    def dense_ms(self, target: BlockTarget) -> float:
        return float(self.entries[self.key(target)]["dense"])

    def cost(self, target: BlockTarget, kept_blocks: int) -> float:
        """ms of the layer as it would run: the faster of dense and block-sparse (dense when nothing is removed)."""
        if kept_blocks >= target.num_blocks:
            return self.dense_ms(target)
        return min(self.dense_ms(target), self.sparse_ms(target, kept_blocks))

    def keep_dense(self, target: BlockTarget, kept_blocks: int) -> bool:
        """True where the dense kernel is at least as fast (for `prunekit.blocks.plan.convert`)."""
        return kept_blocks >= target.num_blocks or self.dense_ms(target) <= self.sparse_ms(target, kept_blocks)

    def __call__(self, target: BlockTarget, kept_blocks: int) -> float:
        return self.cost(target, kept_blocks)


def _cache_name(shapes: List[str], tokens: int, threads: int) -> str:
    desc = json.dumps([str(torch.backends.cpu.get_cpu_capability()), torch.__version__, tokens, threads,
                       sorted(shapes)])
    return hashlib.sha256(desc.encode()).hexdigest()[:16]


def measure_latency_table(targets: Sequence[BlockTarget], tokens: int, threads: int = 1,
                          densities: Sequence[float] = DENSITIES, repeats: int = 15,
                          use_cache: bool = True) -> LatencyTable:
    """Time every distinct layer shape of `targets` (cached on disk; see the module docstring)."""
    unique = {LatencyTable.key(t): t for t in targets}
    path = cache_root() / "blocks" / f"latency_{_cache_name(list(unique), tokens, threads)}.json"
    if use_cache and path.is_file():
        data = json.loads(path.read_text())
        return LatencyTable(data["tokens"], data["threads"], data["entries"])
    table = LatencyTable(tokens, threads)
    with torch_threads(threads):
        for key, t in unique.items():
            _, cols = t.grid
            ks = sorted({max(1, min(cols, round(d * cols))) for d in densities})
            table.entries[key] = time_layer(t.shape, t.block, tokens, ks, repeats)
    atomic_write_text(path, json.dumps({"tokens": tokens, "threads": threads, "entries": table.entries}, indent=1))
    return table
