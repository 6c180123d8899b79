"""What deployment needs: checkpoint folders (save / load), Hugging Face folders, ONNX, torch.export, BN folding.

    prunekit.export.save(pruned, plan, "out/")           # model.safetensors + plan.json (+ original_config.json, hf/)
    model = prunekit.export.load("out/")                  # never runs code named by the checkpoint
    prunekit.export.export_onnx_checked(model, x, "m.onnx")   # raises ExportError if onnxruntime disagrees
    prunekit.export.export_program(model, x, "m.pt2")     # torch.export, checked against eager
    folded = prunekit.export.fold_batchnorm(model, x)     # BatchNorm folded into the conv before it

Submodules are imported on first use, so importing this package stays light.
"""
from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "save": "checkpoint", "load": "checkpoint", "read_plan": "checkpoint", "sha256_file": "checkpoint",
    "check_destination": "folder", "staged_folder": "folder",
    "save_pretrained": "hf", "load_pretrained": "hf",
    "export_onnx": "onnx", "export_onnx_checked": "onnx", "run_onnxruntime": "onnx", "OnnxExport": "onnx",
    "export_program": "torch_export",
    "fold_batchnorm": "bn_fold", "fold_bn": "bn_fold",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
