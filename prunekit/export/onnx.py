"""ONNX export of a (pruned) model, checked against onnxruntime on the same inputs."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ExportError
from ._outputs import FlatOutputs, positional, quiet_exporters, relative_error, tensor_leaves


@dataclass(frozen=True)
class OnnxExport:
    """The result of `export_onnx_checked`: the file, the exporter that wrote it, and the equality check."""

    path: str
    exporter: str
    relative_error: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.relative_error <= self.tolerance


def export_onnx(model: nn.Module, inputs: Any, path: str | Path, opset: int = 18) -> str:
    """Write `model` (called on `inputs`) as ONNX: the dynamo exporter first, the TorchScript one if it refuses.

    Args:
        model: exported in its current mode (use eval mode).
        inputs: a tensor (``[B, 3, H, W]`` images, ``[B, T]`` token ids), a tuple of tensors, or a dict passed by name.
        path: the ``.onnx`` file.

    Returns:
        ``"dynamo"`` or ``"torchscript"``: the exporter that succeeded.

    Raises:
        ExportError: both exporters refused; the message names the model and each exporter's first error line.
    """
    args, names = positional(inputs)
    args = tuple(t.detach().cpu() for t in args)
    wrapped = FlatOutputs(model, names).eval() if not isinstance(model, FlatOutputs) else model
    input_names = list(names) or [f"input_{i}" for i in range(len(args))]
    errors = []
    for dynamo in (True, False):
        try:
            options = {"external_data": False} if dynamo else {}  # one self-contained file (models < 2 GB)
            with quiet_exporters(), torch.no_grad():
                torch.onnx.export(wrapped, args, str(path), input_names=input_names, opset_version=opset,
                                  dynamo=dynamo, verbose=False, **options)
            return "dynamo" if dynamo else "torchscript"
        except Exception as exc:  # noqa: BLE001 - every exporter failure leads to the fallback, then a clear error
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            errors.append(f"{'dynamo' if dynamo else 'torchscript'} exporter: {type(exc).__name__}: {first[:300]}")
    raise ExportError(f"ONNX export of {type(model).__name__} failed: " + "; ".join(errors))


def run_onnxruntime(path: str | Path, inputs: Any, threads: int = 1) -> list:
    """Outputs of the ONNX file on `inputs` (onnxruntime, CPU), as tensors in the exported order."""
    import onnxruntime as ort

    args, _ = positional(inputs)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {i.name: a.detach().cpu().numpy() for i, a in zip(session.get_inputs(), args)}
    return [torch.from_numpy(o) for o in session.run(None, feed)]


def export_onnx_checked(model: nn.Module, inputs: Any, path: str | Path, check_inputs: Any = None,
                        tolerance: float = 1e-4, opset: int = 18) -> OnnxExport:
    """Export to ONNX and compare onnxruntime's outputs with PyTorch's on `check_inputs` (default: `inputs`).

    The exported shapes are those of `inputs`, so `check_inputs` must have the same shapes (other values).

    Raises:
        ExportError: the exporter refused, or onnxruntime's outputs differ by more than `tolerance` (relative to
            the largest output magnitude).
    """
    model = model.eval()
    exporter = export_onnx(model, inputs, path, opset=opset)
    check = inputs if check_inputs is None else check_inputs
    args, names = positional(check)
    with torch.no_grad():
        expected = list(FlatOutputs(model, names)(*args))
    try:
        got = run_onnxruntime(path, check)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
        raise ExportError(f"onnxruntime cannot run the exported {type(model).__name__} ({path}): "
                          f"{str(exc).splitlines()[0][:300]}") from None
    result = OnnxExport(str(path), exporter, relative_error(expected, got), tolerance)
    if not result.passed:
        raise ExportError(f"the ONNX export of {type(model).__name__} ({exporter} exporter) differs from PyTorch by "
                          f"{result.relative_error:.3g} relative (> {tolerance}) on the check inputs")
    return result


__all__ = ["OnnxExport", "export_onnx", "export_onnx_checked", "run_onnxruntime", "tensor_leaves"]
