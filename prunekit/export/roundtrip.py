"""Check every deployment path of a pruned model against the model itself: checkpoint save/load, ONNX with
onnxruntime, torch.export, BatchNorm folding, and Hugging Face save_pretrained / load_pretrained.

Each path ends as ``ok`` (outputs within tolerance), ``refused`` (the exporter refused; the message says what) or
``wrong`` (it ran but the outputs differ: a bug to report).
"""
from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

import torch
from torch import nn

from ..errors import ExportError
from ._outputs import FlatOutputs, positional, relative_error

PATHS = ("save_load", "onnx", "torch_export", "bn_fold", "hf")


@dataclass
class PathResult:
    status: str  # "ok" | "refused" | "wrong" | "n/a"
    relative_error: Optional[float] = None
    message: str = ""

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def outputs(model: nn.Module, inputs: Any):
    """The model's output tensors on `inputs` (flat, in order), without gradients."""
    args, names = positional(inputs)
    with torch.no_grad():
        return list(FlatOutputs(model.eval(), names)(*args))


def _compare(reference, candidate: nn.Module, check: Any, tolerance: float) -> PathResult:
    error = relative_error(reference, outputs(candidate, check))
    return PathResult("ok" if error <= tolerance else "wrong", error)


def check_paths(pruned: nn.Module, plan, inputs: Any, check_inputs: Any, folder: str | Path,
                paths: Sequence[str] = PATHS, tolerance: float = 1e-4) -> Dict[str, PathResult]:
    """Run each deployment path of `pruned` and compare its outputs with `pruned` on `check_inputs`.

    Args:
        pruned: the pruned model (eval mode); plan: its `PruningPlan`.
        inputs: the export inputs; check_inputs: other values of the same shapes.
        folder: scratch folder for the files each path writes.
    """
    from . import bn_fold, checkpoint, onnx, torch_export

    folder = Path(folder)
    reference = outputs(pruned, check_inputs)
    runs: Dict[str, Callable[[], PathResult]] = {
        "save_load": lambda: (checkpoint.save(pruned, plan, folder / "ckpt", hf=False),
                              _compare(reference, checkpoint.load(folder / "ckpt"), check_inputs, tolerance))[1],
        "onnx": lambda: PathResult("ok", onnx.export_onnx_checked(
            pruned, inputs, folder / "model.onnx", check_inputs=check_inputs, tolerance=tolerance).relative_error),
        "torch_export": lambda: (torch_export.export_program(pruned, inputs, check_inputs=check_inputs,
                                                             tolerance=tolerance), PathResult("ok"))[1],
        "bn_fold": lambda: _compare(reference, bn_fold.fold_batchnorm(pruned, inputs), check_inputs, tolerance),
        "hf": lambda: _hf(pruned, plan, folder / "hf", reference, check_inputs, tolerance),
    }
    results = {}
    for name in paths:
        try:
            results[name] = runs[name]()
        except ExportError as exc:
            results[name] = PathResult("wrong" if "differs" in str(exc) else "refused", message=str(exc))
    return results


def _hf(pruned, plan, folder: Path, reference, check, tolerance) -> PathResult:
    from . import hf

    if not hasattr(pruned, "save_pretrained"):
        return PathResult("n/a", message="not a Hugging Face model")
    hf.save_pretrained(pruned, plan, folder)
    return _compare(reference, hf.load_pretrained(folder), check, tolerance)


def scratch_folder() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="prunekit_roundtrip_")
