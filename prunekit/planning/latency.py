"""Measured latency as a cost model: per-layer timings at a few widths on a named runtime, cached, interpolated.

MACs say little about time on a real machine: a convolution pruned to a width that is not a multiple of the
kernel's channel block costs as much as the wider one, and memory-bound layers cost more than their MACs say.
`latency_cost` therefore times every conv / linear layer of the model *as it is called in the model* (same input
shape, stride, groups...) on its own, at a grid of output x input widths (fractions 0.25, 0.5, 0.75, 1 by
default), and predicts the model's time after an allocation as

    layer_scale * sum over layers of calls * t_layer(kept out channels, kept in channels)    (bilinear in the grid)
    + fixed

A copy of the model with every group halved is timed beside the original, and the line through those two
measurements sets ``layer_scale`` and ``fixed`` (the part pruning cannot reduce: per-operation overheads, and
whatever the runtime fuses or overlaps, which layers timed one by one cannot see). Without that calibration the time
outside the layers is taken to follow the layers' output activation volume. Timings are made
monotone in width (a wider layer never costs less), so the budget search can bisect.

Runtimes: ``eager`` (PyTorch on the CPU, the model as built), ``eager-bnfold`` (the same, with BatchNorm folded
into the convolutions, as deployed), ``onnxruntime`` (each layer as a one-node ONNX graph, the whole model exported;
CPU, sequential), ``cuda`` (eager on the GPU). Tables are cached in ``<cache>/latency/<key>.json``, keyed by the
hardware, runtime, dtype and thread count, with one entry per layer signature (which includes its input shape).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from ..graph.types import Allocation, ChannelGroup
from .cost import Cost, layer_widths
from .latency_table import DEFAULT_FRACTIONS, TABLE_VERSION, LatencyTable, interpolate
from .latency_timer import RUNTIMES, LayerCall, Timer, _median_ms, _threads, onnx_layer, record_layers

__all__ = ["RUNTIMES", "DEFAULT_FRACTIONS", "TABLE_VERSION", "LayerCall", "record_layers", "Timer", "onnx_layer",
           "LatencyTable", "interpolate", "LatencyModel", "fit_latency_model", "latency_cost"]


@dataclass
class LatencyModel:
    """The fitted model of one (model, inputs, runtime): per-layer grids, the measured whole-model time and the
    rest (whole minus the layers' full-width times); `layer_scale` < 1 when the layers timed alone added up to more
    than the whole model (their times are then scaled to it, so the unpruned prediction is the measured time)."""

    layers: Dict[str, LayerCall]
    grids: Dict[str, Dict[str, Any]]
    full_ms: Dict[str, float]
    model_ms: float
    rest_ms: float
    runtime: str
    layer_scale: float = 1.0
    rest_fixed_ms: float = 0.0
    calibrated: bool = False

    def layers_ms(self, kept: Dict[str, Tuple[float, float]]) -> float:
        """The layers' part of `predict` (before `layer_scale`)."""
        value = 0.0
        for name, layer in self.layers.items():
            f_out, f_in = kept.get(name, (1.0, 1.0))
            if layer.kind == "other" or math.isnan(self.grids[name]["ms"][-1][-1]):
                value += self.full_ms[name] * f_out * f_in * layer.calls
            else:
                value += interpolate(self.grids[name], f_out * layer.out_channels,
                                     f_in * layer.in_channels) * layer.calls
        return value

    def activation_fraction(self, kept: Dict[str, Tuple[float, float]]) -> float:
        """Kept fraction of the layers' output elements."""
        total = sum(layer.output_numel * layer.calls for layer in self.layers.values()) or 1
        return sum(layer.output_numel * layer.calls * kept.get(name, (1.0, 1.0))[0]
                   for name, layer in self.layers.items()) / total

    def calibrate(self, kept: Dict[str, Tuple[float, float]], full_ms: float, pruned_ms: float) -> None:
        """Fit the prediction through two whole-model measurements: the unpruned model (`full_ms`) and a pruned copy
        (widths `kept`, `pruned_ms`), timed together in alternating rounds.

        predict(k) = layer_scale * layers(k) + rest_fixed_ms, with the line through (layers(full), full_ms) and
        (layers(kept), pruned_ms). The layers' grids give the *shape* of the cost (which widths are slow), the two
        measured models its *level*: the part no pruning removes (per-operation overheads, launch and copy costs)
        is what the line leaves at zero layer time. This holds whatever the runtime fuses or overlaps (BatchNorm
        folded, convolution + activation fused in onnxruntime), which layers timed one by one cannot see.
        A pruned copy measured no faster than the whole (timing noise on a loaded machine) is not evidence of
        anything: the model is then left as fitted.
        """
        layer_full, layer_kept = self.layers_ms({}), self.layers_ms(kept)
        if not 0 < pruned_ms < full_ms or not 0 <= layer_kept < layer_full:
            return
        slope = (full_ms - pruned_ms) / (layer_full - layer_kept)
        fixed = full_ms - slope * layer_full
        if fixed < 0:  # the pruned copy gained more than its layers: no fixed part, proportional through the origin
            slope, fixed = full_ms / layer_full, 0.0
        self.layer_scale, self.rest_fixed_ms, self.rest_ms = slope, fixed, 0.0
        self.model_ms, self.calibrated = full_ms, True

    def predict(self, kept: Dict[str, Tuple[float, float]]) -> float:
        """Predicted time (ms) given each layer's kept (output, input) channel fractions."""
        return (self.layers_ms(kept) * self.layer_scale + self.rest_fixed_ms
                + self.rest_ms * self.activation_fraction(kept))


def fit_latency_model(model: nn.Module, inputs: Any, runtime: str = "eager", threads: int = 1, repeats: int = 7,
                      cache_dir: Any = None, fractions: Sequence[float] = DEFAULT_FRACTIONS,
                      progress: bool = True) -> LatencyModel:
    """Time the model's layers at a grid of widths (cached) and the whole model once on `runtime`.

    Args:
        model: the unpruned model (not modified). inputs: the inputs to time with (their shape is what counts:
            batch 1 and batch 32 are different tables).
        runtime / threads / repeats: see `Timer`. cache_dir / fractions: see `LatencyTable`.
        progress: show a progress bar while measuring.
    """
    timer = Timer(runtime, threads=threads, repeats=repeats)
    layers = record_layers(model, inputs)
    table = LatencyTable(timer, cache_dir, fractions)
    grids: Dict[str, Dict[str, Any]] = {}
    bar = _progress(progress, len(layers), f"timing layers on {runtime}")
    for name, layer in layers.items():
        grids[name] = table.grid(layer)
        bar(1)
    bar(None)
    table.save()
    model_ms = timer.model_ms(model, inputs)
    full: Dict[str, float] = {}
    for name, layer in layers.items():
        value = grids[name]["ms"][-1][-1]
        if layer.kind == "other" or math.isnan(value):
            value = _other_layer_ms(model, layer, timer)
        full[name] = value
    layer_sum = sum(full[n] * layers[n].calls for n in layers)
    scale = 1.0
    if layer_sum > model_ms > 0:
        # Layers timed alone cost more than the whole model (machine load changed between the measurements, or the
        # runtime overlaps work across layers): keep their proportions, scaled to the whole.
        scale = model_ms / layer_sum
    rest = max(model_ms - layer_sum * scale, 0.0)
    return LatencyModel(layers, grids, full, model_ms, rest, runtime, scale)


def _other_layer_ms(model: nn.Module, layer: LayerCall, timer: Timer) -> float:
    """Full-width time of a layer without a grid, timed in eager mode on a copy of the module itself."""
    import copy

    module = copy.deepcopy(model.get_submodule(layer.name)).eval()
    x = torch.randn(layer.input_shape)
    with torch.inference_mode(), _threads(timer.threads):
        return _median_ms(lambda: module(x), lambda: None, timer.repeats)


def _progress(enabled: bool, total: int, description: str) -> Callable[[Optional[int]], None]:
    if not enabled:
        return lambda n: None
    from rich.progress import Progress

    progress = Progress(transient=True)
    progress.start()
    task = progress.add_task(description, total=total)

    def advance(n: Optional[int]) -> None:
        if n is None:
            progress.stop()
        else:
            progress.advance(task, n)

    return advance


def _halved(model: nn.Module, groups: Sequence[ChannelGroup], inputs: Any):
    """A copy of `model` with every prunable group at half its units (constraints applied), and that allocation;
    None when nothing can be removed or the copy cannot be made."""
    import prunekit
    from ..allocate.base import apply_constraints
    from ..prune.plan import PruningPlan, describe_inputs, model_fingerprint

    allocation = apply_constraints(groups, {g.id: g.size // 2 for g in groups if g.prunable and g.size > 1})
    removed = {gid: list(range(n)) for gid, n in allocation.items() if n > 0}
    if not removed:
        return None
    plan = PruningPlan(model_fingerprint(model), removed, {g.id: g.size for g in groups}, describe_inputs(inputs))
    try:
        return prunekit.apply(model, plan, inputs, verify=False).eval(), allocation
    except Exception:  # noqa: BLE001 - calibration is an refinement; without it the rest follows the activations
        return None


def latency_cost(model: nn.Module, groups: Sequence[ChannelGroup], inputs: Any, runtime: str = "eager",
                 threads: int = 1, repeats: int = 7, cache_dir: Any = None,
                 fractions: Sequence[float] = DEFAULT_FRACTIONS, progress: bool = True,
                 calibrate: bool = True) -> Cost:
    """A cost model: predicted milliseconds of one forward on `inputs` on `runtime` after an allocation.

    With `calibrate`, a copy of the model with every group halved is built and timed together with the original,
    and the prediction is fitted through both measurements (see `LatencyModel.calibrate`).

    The returned callable also carries ``.model`` (the `LatencyModel`) for reports.
    """
    fitted = fit_latency_model(model, inputs, runtime, threads, repeats, cache_dir, fractions, progress)
    widths = layer_widths(model, groups, list(fitted.layers))
    if calibrate:
        half = _halved(model, groups, inputs)
        if half is not None:
            pruned, allocation = half
            full_ms, pruned_ms = Timer(runtime, threads, repeats).models_ms([model, pruned], inputs)
            fitted.calibrate(widths(allocation), full_ms, pruned_ms)

    def cost(allocation: Allocation) -> float:
        return fitted.predict(widths(allocation))

    cost.model = fitted  # type: ignore[attr-defined]
    return cost
