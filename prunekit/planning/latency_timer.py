"""Timing of single layers and whole models on a named runtime (the measurements behind the latency cost model).

`record_layers` lists every conv / linear layer as the model calls it (`LayerCall`: hyper-parameters and input
shape); `Timer` times a layer rebuilt at any output x input width, or whole models, on ``eager``, ``eager-bnfold``,
``onnxruntime`` or ``cuda``, in alternating rounds so that a change of machine load shifts every point alike.
"""
from __future__ import annotations

import json
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

import torch
from torch import nn

from ..errors import ConfigError
from .cost import is_weight_layer

RUNTIMES = ("eager", "eager-bnfold", "onnxruntime", "cuda")


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
                    min_sample_s: float = 1e-3, statistic: Callable[[List[float]], float] = statistics.median
                    ) -> List[float]:
    """`statistic` (median by default) of each call's ms over `repeats` alternating rounds (one sample of each call
    per round); each sample times enough back-to-back calls to last `min_sample_s`, after a warm-up."""
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
    return [statistic(s) for s in samples]


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

        The points are timed in alternating rounds (one sample of each point per round) and each keeps its
        fastest sample: load from other processes only ever adds time, so on a shared machine the minimum is the
        estimate of the layer's own cost that is stable from run to run, where a median still carries bursts of
        load into single grid points (and those would bend the curve the budget search follows).
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
            ms = _interleaved_ms(calls, self.sync, self.repeats, statistic=min)
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
