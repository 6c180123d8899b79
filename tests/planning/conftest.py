"""Deterministic timings for tests of the latency budget's plumbing (the measured numbers are a benchmark's job).

`synthetic_timings` replaces the timer's measurements with milliseconds proportional to the MACs of each timed layer
or model, plus a small fixed part per model call, so a latency budget behaves the same on a loaded CI machine as on a
quiet one. Whether the measured times are right is what `benchmarks/engine_latency.py` reports.
"""
from __future__ import annotations

import copy
import math

import pytest

from prunekit.metrics.macs import count_macs
from prunekit.planning import latency

MS_PER_MAC = 1e-6
FIXED_MS = 0.01


def _layer_ms(layer: "latency.LayerCall", out_c: int, in_c: int) -> float:
    """MACs of the layer at output width `out_c` and input width `in_c`, as milliseconds."""
    per_output = (in_c // max(layer.groups, 1) if layer.kind == "conv" else in_c) * math.prod(layer.kernel or (1,))
    if layer.depthwise:
        per_output = math.prod(layer.kernel or (1,))
    outputs = layer.output_numel * out_c / max(layer.out_channels, 1)
    return MS_PER_MAC * outputs * per_output


@pytest.fixture
def synthetic_timings(monkeypatch):
    def grid_ms(self, layer, outs, ins):
        return [[_layer_ms(layer, o, i) for i in ins] for o in outs]

    def models_ms(self, models, inputs):
        args = inputs if isinstance(inputs, tuple) else (inputs,)
        return [FIXED_MS + MS_PER_MAC * count_macs(copy.deepcopy(m).eval(), *args) for m in models]  # model untouched

    monkeypatch.setattr(latency.Timer, "grid_ms", grid_ms)
    monkeypatch.setattr(latency.Timer, "models_ms", models_ms)
    monkeypatch.setattr(latency, "_other_layer_ms", lambda model, layer, timer: 0.0)
