"""Inference latency: eager PyTorch and onnxruntime, with warm-up, a fixed thread count and the median of repeats."""
from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Sequence, Tuple, Union

import torch

from ..errors import UnsupportedOperationError

Inputs = Union[torch.Tensor, Sequence[torch.Tensor]]


@dataclass(frozen=True)
class LatencyResult:
    """Timings of one forward pass in milliseconds (median is the headline figure)."""

    backend: str
    median_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    repeats: int
    warmup: int
    threads: int

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Set ``torch.set_num_threads(threads)`` for the block, restoring the previous value afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _as_tuple(inputs: Inputs) -> Tuple[torch.Tensor, ...]:
    return (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)


def _time_calls(call: Callable[[], Any], warmup: int, repeats: int, sync: Callable[[], None]) -> List[float]:
    if repeats < 1:
        raise ValueError(f"prunekit.metrics.latency: repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        call()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        sync()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def median_call_ms(call: Callable[[], Any], warmup: int = 3, repeats: int = 10) -> float:
    """Median wall time of `call()` in ms over `repeats` timed calls after `warmup` untimed ones (CPU: no sync)."""
    return statistics.median(_time_calls(call, warmup, repeats, lambda: None))


def _result(backend: str, times: List[float], warmup: int, threads: int) -> LatencyResult:
    return LatencyResult(backend, statistics.median(times), statistics.fmean(times), min(times), max(times),
                         len(times), warmup, threads)


def eager_latency(model: torch.nn.Module, inputs: Inputs, warmup: int = 3, repeats: int = 10,
                  threads: int = 1) -> LatencyResult:
    """Latency of ``model(*inputs)`` in eager PyTorch under ``torch.inference_mode``.

    Args:
        model: run as it is (put it in eval mode first for inference figures), on the inputs' device.
        inputs: a tensor (e.g. ``[B, 3, H, W]``) or a sequence of positional tensors.
        warmup: untimed calls first. repeats: timed calls; the median is reported.
        threads: ``torch.set_num_threads`` value during the measurement (restored afterwards).
    """
    args = _as_tuple(inputs)
    cuda = any(t.is_cuda for t in args)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with torch_threads(threads), torch.inference_mode():
        times = _time_calls(lambda: model(*args), warmup, repeats, sync)
    return _result("eager-cuda" if cuda else "eager", times, warmup, threads)


def export_onnx(model: torch.nn.Module, inputs: Inputs, path: str | Path, opset: int = 18) -> str:
    """`prunekit.export.onnx.export_onnx` (kept here for the latency code that imports it from this module)."""
    from ..export.onnx import export_onnx as _export

    return _export(model, inputs, path, opset=opset)


def onnxruntime_latency(model: torch.nn.Module, inputs: Inputs, warmup: int = 3, repeats: int = 10,
                        threads: int = 1) -> LatencyResult:
    """Latency of the model exported to ONNX (temporary file) and run by onnxruntime on the CPU.

    Args:
        model: exported in its current mode (use eval mode); inputs fix the exported shapes.
        inputs: a tensor or a sequence of positional tensors.
        warmup, repeats: as in `eager_latency`.
        threads: onnxruntime ``intra_op_num_threads`` (inter-op 1, sequential execution).
    """
    import onnxruntime as ort

    args = _as_tuple(inputs)
    with tempfile.TemporaryDirectory(prefix="prunekit_onnx_") as tmp:
        path = Path(tmp) / "model.onnx"
        model_was_training = model.training
        try:
            model.eval()
            exporter = export_onnx(model, args, path)
        finally:
            model.train(model_was_training)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {meta.name: t.detach().cpu().numpy() for meta, t in zip(session.get_inputs(), args)}
    times = _time_calls(lambda: session.run(None, feeds), warmup, repeats, lambda: None)
    return _result(f"onnxruntime({exporter})", times, warmup, threads)
