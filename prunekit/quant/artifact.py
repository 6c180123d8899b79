"""The low-bit artifact: integer weights plus per-channel scales in safetensors, and its loader.

Folder layout (no pickle anywhere):

* ``quantized.safetensors``: for every quantised layer ``<module>.weight.q`` (int8 values in
  [-(2^(b-1) - 1), 2^(b-1) - 1]; at 4 bits and below two values are packed per byte into a uint8 tensor
  ``<module>.weight.q_packed``) and ``<module>.weight.scale`` (float32 [C_out]); every other state tensor (biases,
  norms, buffers) as float.
* ``compress.json``: bits, the quantised layers and their shapes, the BatchNorms folded away, how to rebuild the
  architecture (``model_spec``), and the compression report.
* ``plan.json`` when channels were pruned (the engine's `PruningPlan`, replayed on load).

`load_quantized` rebuilds the original architecture, replays the plan, folds the same BatchNorms and loads the
dequantised weights, so the loaded model runs in plain float PyTorch.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from ..errors import CheckpointError
from ..io import atomic_write_text, load_tensors, save_tensors
from .fold import fold_batchnorm
from .uniform import check_bits, dequantize

META_FILE = "compress.json"
WEIGHTS_FILE = "quantized.safetensors"
FORMAT = "prunekit-lowbit-v1"


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """int8 values in [-7, 7] -> uint8 [ceil(n / 2)], two per byte (low nibble first), offset by 8."""
    flat = (q.reshape(-1).to(torch.int16) + 8).to(torch.uint8)
    if flat.numel() % 2:
        flat = torch.cat([flat, torch.full((1,), 8, dtype=torch.uint8)])
    return flat[0::2] | (flat[1::2] << 4)


def unpack_nibbles(packed: torch.Tensor, shape: Tuple[int, ...]) -> torch.Tensor:
    """Inverse of `pack_nibbles`: int8 tensor of `shape`."""
    low, high = (packed & 0x0F).to(torch.int16) - 8, (packed >> 4).to(torch.int16) - 8
    flat = torch.stack([low, high], 1).reshape(-1)
    n = 1
    for s in shape:
        n *= s
    return flat[:n].to(torch.int8).reshape(shape)


def save_quantized(out_dir: str | Path, model: nn.Module, quantized: Dict[str, Tuple[torch.Tensor, torch.Tensor]],
                   bits: int, folded: Dict[str, str], model_spec: Dict[str, Any], plan=None,
                   report: Optional[Dict[str, Any]] = None) -> Path:
    """Write the artifact (see the module docstring) atomically file by file.

    Args:
        model: the compressed model (pruned, BN folded, weights already dequantised in place).
        quantized: module name -> (q int8 [C_out, ...], scale [C_out]) for every quantised layer.
        bits: bit width of `quantized`.
        folded: producer -> BN module folded into it.
        model_spec: how to rebuild the original architecture (``{"registry": name}`` or ``{"factory": "m:f"}``).
        plan: the `PruningPlan` applied, or None.
    """
    bits = check_bits(bits)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors: Dict[str, torch.Tensor] = {}
    shapes: Dict[str, list] = {}
    for name, (q, scale) in quantized.items():
        if bits <= 4:
            tensors[f"{name}.weight.q_packed"] = pack_nibbles(q)
        else:
            tensors[f"{name}.weight.q"] = q
        tensors[f"{name}.weight.scale"] = scale.float()
        shapes[name] = list(q.shape)
    for key, value in model.state_dict().items():
        module = key.rsplit(".", 1)[0]
        if key.endswith(".weight") and module in quantized:
            continue
        tensors[key] = value
    save_tensors(out / WEIGHTS_FILE, tensors, metadata={"format": FORMAT, "bits": str(bits)})
    if plan is not None:
        plan.save(out / "plan.json")
    meta = {"format": FORMAT, "bits": bits, "quantized": shapes, "folded": folded, "model_spec": model_spec,
            "pruned": plan is not None, "report": report or {}}
    atomic_write_text(out / META_FILE, json.dumps(meta, indent=2, default=str))
    return out


def _build(spec: Dict[str, Any], folder: Path) -> nn.Module:
    """The original architecture from the stored spec, by the rules of `prunekit.export.model_spec`: a registry
    name, a saved Hugging Face config or another checkpoint folder, never code the file names."""
    from ..export.model_spec import build_original

    return build_original(folder, spec)


def load_quantized(out_dir: str | Path, model: Optional[nn.Module] = None) -> nn.Module:
    """Rebuild a compressed model from its artifact folder; weights are dequantised on load (float32 model).

    Args:
        out_dir: a folder written by `save_quantized`.
        model: the original (unpruned, unfolded) architecture; built from the stored ``model_spec`` when None.
    """
    import warnings

    out = Path(out_dir)
    meta_path = out / META_FILE
    if not meta_path.exists():
        raise CheckpointError(f"{out} is not a low-bit artifact (no {META_FILE})")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: unknown format {meta.get('format')!r} (expected {FORMAT})")
    if model is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = _build(meta["model_spec"], out)
    model.eval()
    if meta.get("pruned"):
        import prunekit
        from ..prune.plan import PruningPlan

        model = prunekit.apply(model, PruningPlan.load(out / "plan.json"), inplace=True, verify=False)
    fold_batchnorm(model, meta["folded"])
    tensors = load_tensors(out / WEIGHTS_FILE)
    state: Dict[str, torch.Tensor] = {}
    bits = int(meta["bits"])
    for name, shape in meta["quantized"].items():
        if bits <= 4:
            q = unpack_nibbles(tensors.pop(f"{name}.weight.q_packed"), tuple(shape))
        else:
            q = tensors.pop(f"{name}.weight.q")
        state[f"{name}.weight"] = dequantize(q, tensors.pop(f"{name}.weight.scale"))
    state.update(tensors)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{out / WEIGHTS_FILE} does not match the compressed architecture: missing "
                              f"{missing[:8]}, unexpected {unexpected[:8]}")
    return model
