"""Measured latency as a cost model: per-layer timings at a few widths on a named runtime, cached, interpolated.

MACs say little about time on a real machine: a convolution pruned to a width that is not a multiple of the
kernel's channel block costs as much as the wider one, and memory-bound layers cost more than their MACs say.
`latency_cost` therefore times every conv / linear layer of the model *as it is called in the model* (same input
shape, stride, groups...) on its own, at a grid of output x input widths (fractions 0.25, 0.5, 0.75, 1 by
default), and predicts the model's time after an allocation as

    sum over layers of calls * t_layer(kept out channels, kept in channels)      (bilinear in the grid)
    + rest * (kept fraction of the layers' output activations) + fixed

where ``rest + fixed`` is the measured whole-model time minus the layers' full-width times: the normalisation,
activation, addition and copying passes and per-operation overheads. A copy of the model with every group halved is
timed beside the original to split it into the part that follows the activation volume (``rest``) and the part
pruning cannot reduce (``fixed``). Timings are made monotone in width (a wider layer never costs less), so the
budget search can bisect.

Runtimes: ``eager`` (PyTorch on the CPU, the model as built), ``eager-bnfold`` (the same, with BatchNorm folded
into the convolutions, as deployed), ``onnxruntime`` (each layer as a one-node ONNX graph, the whole model exported;
CPU, sequential), ``cuda`` (eager on the GPU). Tables are cached in ``<cache>/latency/<key>.json``, keyed by the
hardware, runtime, dtype and thread count, with one entry per layer signature (which includes its input shape).
"""
from __future__ import annotations

import hashlib
import json
import math
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import ConfigError
from ..graph.types import Allocation, ChannelGroup
from .cost import Cost, is_weight_layer, layer_widths

RUNTIMES = ("eager", "eager-bnfold", "onnxruntime", "cuda")
DEFAULT_FRACTIONS = (0.25, 0.5, 0.75, 1.0)
TABLE_VERSION = 1


@dataclass(frozen=True)
class LayerCall:
    """One conv / linear layer as the model calls it.

    Attributes:
        name: qualified module name. kind: ``conv`` | ``linear`` | ``other`` (timed at full width only and scaled
            by its kept channel fractions).
        in_channels / out_channels / kernel / stride / padding / dilation / groups: the layer's hyper-parameters.
        input_shape: shape of its input in the model's forward (batch included).
        output_numel: elements of its output (weights the non-layer passes in ``rest``).
        calls: how many times one forward calls it.
    """

    name: str
    kind: str
    in_channels: int
    out_channels: int
    input_shape: Tuple[int, ...]
    output_numel: int
    kernel: Tuple[int, ...] = ()
    stride: Tuple[int, ...] = ()
    padding: Tuple[int, ...] = ()
    dilation: Tuple[int, ...] = ()
    groups: int = 1
    bias: bool = True
    calls: int = 1

    @property
    def depthwise(self) -> bool:
        return self.kind == "conv" and self.groups > 1 and self.groups == self.in_channels == self.out_channels

    def signature(self) -> str:
        """What determines its time (not its name): the cache key of its grid."""
        fields = asdict(self)
        fields.pop("name"), fields.pop("calls"), fields.pop("output_numel")
        return json.dumps(fields, sort_keys=True)

    def grid(self, fractions: Sequence[float]) -> Tuple[List[int], List[int]]:
        """Output and input widths timed: the fractions of each channel count (depthwise: the diagonal, grouped
        and other layers: full width only)."""
        def widths(c: int) -> List[int]:
            return sorted({max(1, int(round(f * c))) for f in fractions} | {c})
        if self.kind == "other" or (self.kind == "conv" and self.groups > 1 and not self.depthwise):
            return [self.out_channels], [self.in_channels]
        if self.depthwise:
            return widths(self.out_channels), [self.in_channels]
        return widths(self.out_channels), widths(self.in_channels) if self.in_channels > 1 else [self.in_channels]


def record_layers(model: nn.Module, inputs: Any) -> Dict[str, LayerCall]:
    """Every conv / linear layer the forward on `inputs` calls, with its input shape (model left as found)."""
    from ..graph.trace import call_model
    from .steps import model_unchanged

    seen: Dict[str, LayerCall] = {}
    handles = []

    def hook(name: str):
        def record(module: nn.Module, args: Tuple, output: Any) -> None:
            if name in seen:
                old = seen[name]
                seen[name] = LayerCall(**{**asdict(old), "calls": old.calls + 1})
                return
            x = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if x is None or not isinstance(output, torch.Tensor):
                return
            seen[name] = _describe(name, module, tuple(x.shape), output.numel())
        return record

    for name, module in model.named_modules():
        if is_weight_layer(module):
            handles.append(module.register_forward_hook(hook(name)))
    try:
        with model_unchanged(model), torch.no_grad():
            model.eval()
            call_model(model, inputs, None)
    finally:
        for h in handles:
            h.remove()
    return seen


def _describe(name: str, module: nn.Module, input_shape: Tuple[int, ...], output_numel: int) -> LayerCall:
    w = module.weight
    bias = getattr(module, "bias", None) is not None
    plain_conv = isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and module.padding_mode == "zeros"
    if plain_conv:
        padding = module.padding
        if isinstance(padding, str):  # "same" / "valid": explicit symmetric padding for the timed copy
            padding = tuple(d * (k - 1) // 2 if padding == "same" else 0
                            for k, d in zip(module.kernel_size, module.dilation))
        return LayerCall(name, "conv", module.in_channels, module.out_channels, input_shape, output_numel,
                         tuple(module.kernel_size), tuple(module.stride), tuple(padding), tuple(module.dilation),
                         module.groups, bias)
    if isinstance(module, nn.Linear):
        return LayerCall(name, "linear", module.in_features, module.out_features, input_shape, output_numel,
                         bias=bias)
    return LayerCall(name, "other", int(w.shape[1]) if w.dim() > 1 else 1, int(w.shape[0]), input_shape,
                     output_numel, bias=bias)


# ----------------------------------------------------------------------------------------------------- timing
def _median_ms(call: Callable[[], Any], sync: Callable[[], None], repeats: int, min_sample_s: float = 1e-3) -> float:
    """Median time of `call` in ms: warm-up, then `repeats` samples of enough calls to last `min_sample_s`."""
    return _interleaved_ms([call], sync, repeats, min_sample_s)[0]


def _interleaved_ms(calls: Sequence[Callable[[], Any]], sync: Callable[[], None], repeats: int,
                    min_sample_s: float = 1e-3) -> List[float]:
    """Median ms of each call over `repeats` alternating rounds (one sample of each call per round); each sample
    times enough back-to-back calls to last `min_sample_s`, after a warm-up."""
    inner = []
    for call in calls:
        for _ in range(2):
            call()
        sync()
        start = time.perf_counter()
        call()
        sync()
        inner.append(max(1, int(min_sample_s / max(time.perf_counter() - start, 1e-7))))
    samples: List[List[float]] = [[] for _ in calls]
    for r in range(repeats):
        order = range(len(calls)) if r % 2 == 0 else reversed(range(len(calls)))
        for k in order:
            start = time.perf_counter()
            for _ in range(inner[k]):
                calls[k]()
            sync()
            samples[k].append((time.perf_counter() - start) / inner[k] * 1000.0)
    return [statistics.median(s) for s in samples]


def _build_layer(layer: LayerCall, out_c: int, in_c: int, dtype: torch.dtype) -> nn.Module:
    if layer.kind == "linear":
        return nn.Linear(in_c, out_c, bias=layer.bias).to(dtype).eval()
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[len(layer.kernel)]
    groups = out_c if layer.depthwise else layer.groups
    in_c = out_c if layer.depthwise else in_c
    return conv(in_c, out_c, layer.kernel, layer.stride, layer.padding, layer.dilation, groups,
                bias=layer.bias).to(dtype).eval()


def _layer_input(layer: LayerCall, in_c: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    shape = list(layer.input_shape)
    shape[-1 if layer.kind == "linear" else 1] = in_c
    return torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype).to(device)


class Timer:
    """Times layers and whole models on one runtime.

    Args:
        runtime: one of `RUNTIMES`.
        threads: intra-op threads (torch and onnxruntime).
        repeats: samples per measurement (the median is kept).
        dtype: floating dtype of the timed layers.
    """

    def __init__(self, runtime: str, threads: int = 1, repeats: int = 7, dtype: torch.dtype = torch.float32):
        if runtime not in RUNTIMES:
            raise ConfigError(f"latency runtime must be one of {RUNTIMES}, got {runtime!r}")
        if runtime == "cuda" and not torch.cuda.is_available():
            raise ConfigError("latency runtime 'cuda' needs a CUDA device, and torch sees none")
        self.runtime, self.threads, self.repeats, self.dtype = runtime, threads, repeats, dtype
        self.device = "cuda" if runtime == "cuda" else "cpu"
        self.sync = torch.cuda.synchronize if runtime == "cuda" else (lambda: None)

    def hardware(self) -> str:
        """A description of the machine the timings belong to (part of the cache key)."""
        if self.runtime == "cuda":
            return f"cuda:{torch.cuda.get_device_name()}"
        cpu = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        return f"{cpu}|{torch.backends.cpu.get_cpu_capability()}"

    def versions(self) -> str:
        if self.runtime == "onnxruntime":
            import onnxruntime

            return f"onnxruntime {onnxruntime.__version__}"
        return f"torch {torch.__version__.split('+')[0]}"

    def grid_ms(self, layer: LayerCall, outs: Sequence[int], ins: Sequence[int]) -> List[List[float]]:
        """Times (ms) of the layer at every `outs` x `ins` width on its recorded input shape.

        The points are timed in alternating rounds (one sample of each point per round, medians kept), so a
        change of machine load while measuring shifts every point alike instead of bending the curve.
        """
        calls = []
        for o in outs:
            for i in ins:
                x = _layer_input(layer, o if layer.depthwise else i, self.dtype, self.device)
                module = _build_layer(layer, o, i, self.dtype).to(self.device)
                if self.runtime == "onnxruntime":
                    calls.append(self._ort_call(onnx_layer(module, layer, x), [x]))
                else:
                    calls.append(lambda module=module, x=x: module(x))
        with torch.inference_mode(), _threads(self.threads):
            ms = _interleaved_ms(calls, self.sync, self.repeats)
        return [ms[k * len(ins):(k + 1) * len(ins)] for k in range(len(outs))]

    def model_ms(self, model: nn.Module, inputs: Any) -> float:
        """Time of the whole model on `inputs` (a tensor or a tuple of tensors) on this runtime."""
        return self.models_ms([model], inputs)[0]

    def models_ms(self, models: Sequence[nn.Module], inputs: Any) -> List[float]:
        """Times of several models on the same inputs, measured in alternating rounds (comparable under load)."""
        calls = [self._model_call(m, inputs) for m in models]
        with torch.inference_mode(), _threads(self.threads):
            return _interleaved_ms(calls, self.sync, self.repeats, min_sample_s=5e-3)

    def _model_call(self, model: nn.Module, inputs: Any) -> Callable[[], Any]:
        """A call of an eval-mode copy of `model` on this runtime (the caller's model keeps its mode and buffers)."""
        import copy

        from ..graph.trace import call_model

        model = copy.deepcopy(model).eval()

        args = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
        if not all(isinstance(a, torch.Tensor) for a in args):
            raise ConfigError("a latency budget needs tensor example inputs (a tensor or a tuple of tensors)")
        if self.runtime == "onnxruntime":
            from ..metrics.latency import export_onnx

            with tempfile.TemporaryDirectory(prefix="prunekit_latency_") as tmp:
                path = Path(tmp) / "model.onnx"
                export_onnx(model, args, path)
                return self._ort_call(path.read_bytes(), list(args))
        if self.runtime == "eager-bnfold":
            from ..export.bn_fold import fold_batchnorm

            model = fold_batchnorm(model, args if len(args) > 1 else args[0])
        model = model.to(self.device)
        args = tuple(a.to(self.device) for a in args)
        return lambda: call_model(model, args if len(args) > 1 else args[0], None)

    def _ort_call(self, onnx_model: bytes, args: List[torch.Tensor]) -> Callable[[], Any]:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = self.threads, 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        session = ort.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])
        feed = {meta.name: a.detach().cpu().numpy() for meta, a in zip(session.get_inputs(), args)}
        return lambda: session.run(None, feed)


class _threads:
    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        self.previous = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.previous)


def onnx_layer(module: nn.Module, layer: LayerCall, x: torch.Tensor) -> bytes:
    """A one-node ONNX graph (Conv, or MatMul + Add) with the module's weights, built directly (no exporter)."""
    from onnx import TensorProto, helper, numpy_helper

    w = module.weight.detach().cpu()
    inits, nodes = [], []
    out_shape = list(module(x.cpu()).shape) if layer.kind == "linear" else None
    if layer.kind == "linear":
        inits.append(numpy_helper.from_array(w.t().contiguous().numpy(), "W"))
        nodes.append(helper.make_node("MatMul", ["x", "W"], ["mm" if layer.bias else "y"]))
        if layer.bias:
            inits.append(numpy_helper.from_array(module.bias.detach().cpu().numpy(), "B"))
            nodes.append(helper.make_node("Add", ["mm", "B"], ["y"]))
    else:
        inits.append(numpy_helper.from_array(w.numpy(), "W"))
        names = ["x", "W"]
        if layer.bias:
            inits.append(numpy_helper.from_array(module.bias.detach().cpu().numpy(), "B"))
            names.append("B")
        nodes.append(helper.make_node("Conv", names, ["y"], kernel_shape=list(layer.kernel),
                                      strides=list(layer.stride), pads=list(layer.padding) * 2,
                                      dilations=list(layer.dilation), group=int(module.groups)))
    elem = TensorProto.FLOAT if x.dtype == torch.float32 else TensorProto.FLOAT16
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", elem, list(x.shape))],
                              [helper.make_tensor_value_info("y", elem, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    return model.SerializeToString()


# ------------------------------------------------------------------------------------------------------ table
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
    """Running maxima along both axes: a wider layer never costs less (removes timing noise inversions)."""
    out = [list(row) for row in ms]
    for i in range(len(out)):
        for j in range(len(out[i])):
            best = out[i][j]
            if i:
                best = max(best, out[i - 1][j])
            if j:
                best = max(best, out[i][j - 1])
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


# -------------------------------------------------------------------------------------------------- the cost
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
        """Split the rest into a fixed part (per-call overheads) and a part that follows the activations, from the
        measured times of the whole model and of a pruned copy (widths `kept`), timed together.

        rest(a) = fixed + scaled * a, through rest(1) = full - layers(full) and rest(a_p) = pruned - layers(kept).
        A pruned copy measured no faster than the whole (timing noise on a loaded machine) is not evidence of
        anything: the model is then left as fitted.
        """
        if not 0 < pruned_ms < full_ms:
            return
        layer_full = self.layers_ms({})
        self.layer_scale = min(1.0, full_ms / layer_full) if layer_full > 0 else 1.0
        rest_full = max(full_ms - layer_full * self.layer_scale, 0.0)
        act = self.activation_fraction(kept)
        rest_pruned = pruned_ms - self.layers_ms(kept) * self.layer_scale
        scaled = (rest_full - rest_pruned) / (1.0 - act) if act < 1.0 else rest_full
        self.rest_ms = min(max(scaled, 0.0), rest_full)
        self.rest_fixed_ms = rest_full - self.rest_ms
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
    which splits the time outside the conv / linear layers into a fixed part (per-operation overheads, which
    pruning does not reduce) and a part that follows the activation volume (see `LatencyModel.calibrate`).

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
