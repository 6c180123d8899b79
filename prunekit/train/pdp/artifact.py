"""Hard masks as a first-class artifact: bit-packed in safetensors plus a JSON index, replayable and verifiable.

Files (no pickle anywhere)::

    masks.json         {"version", "format", "entries": {name: {module, param, shape, pattern, n, m, in_dim,
                        kept}}, "provenance"}
    masks.safetensors  one uint8 tensor per entry: the boolean keep-mask, flattened in row-major order and
                       bit-packed (numpy.packbits, big-endian bit order), 1 bit per weight.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ...errors import CheckpointError, ConfigError
from .targets import get_module, to_groups

MASKS_VERSION = 1
INDEX_FILE, TENSOR_FILE = "masks.json", "masks.safetensors"


@dataclass
class MaskEntry:
    """Where one mask goes and the pattern it claims.

    Attributes:
        module / param: the masked weight ``model.<module>.<param>``.
        shape: the weight's shape.
        pattern: ``"unstructured"`` or ``"nm"`` (then `n` of every `m` consecutive entries along `in_dim` are kept).
        kept: number of kept weights (a checksum of the packed bits).
    """

    module: str
    param: str
    shape: Tuple[int, ...]
    pattern: str = "unstructured"
    n: int = 0
    m: int = 0
    in_dim: int = 1
    kept: int = 0

    @property
    def name(self) -> str:
        return f"{self.module}.{self.param}" if self.module else self.param


class FrozenMask(nn.Module):
    """Parametrization multiplying a weight by a fixed 0/1 mask (fine-tuning with frozen masks)."""

    def __init__(self, keep: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", keep.to(torch.float32))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask.to(w.dtype)


def pack_bits(keep: torch.Tensor) -> torch.Tensor:
    """Bool tensor (any shape) -> uint8 [ceil(numel / 8)]."""
    return torch.from_numpy(np.packbits(keep.detach().cpu().reshape(-1).numpy().astype(np.uint8)))


def unpack_bits(packed: torch.Tensor, shape: Tuple[int, ...]) -> torch.Tensor:
    """uint8 [ceil(numel / 8)] -> bool tensor of `shape`."""
    numel = int(np.prod(shape)) if shape else 1
    bits = np.unpackbits(packed.cpu().numpy().astype(np.uint8), count=numel)
    return torch.from_numpy(bits.astype(bool)).reshape(shape)


def nm_violations(keep: torch.Tensor, entry: MaskEntry) -> int:
    """Groups of `entry.m` along `entry.in_dim` whose keep-mask does not hold exactly `entry.n` ones."""
    groups = to_groups(keep, entry.in_dim, entry.m)
    return int((groups.sum(-1) != entry.n).sum())


class MaskSet:
    """Hard keep-masks of several weights.

    Args:
        entries: name -> `MaskEntry`.
        masks: name -> bool keep-mask of the entry's shape.
        provenance: free-form facts (method, sparsity, date).
    """

    def __init__(self, entries: Dict[str, MaskEntry], masks: Dict[str, torch.Tensor],
                 provenance: Optional[Dict[str, Any]] = None):
        if set(entries) != set(masks):
            raise ConfigError(f"MaskSet: entries and masks differ: {sorted(set(entries) ^ set(masks))[:5]}")
        for name, e in entries.items():
            if tuple(masks[name].shape) != tuple(e.shape):
                raise ConfigError(f"MaskSet: mask of '{name}' has shape {tuple(masks[name].shape)}, entry says "
                                  f"{tuple(e.shape)}")
            e.kept = int(masks[name].sum())
        self.entries, self.masks = entries, {k: v.detach().bool().cpu() for k, v in masks.items()}
        self.provenance = dict(provenance or {})

    # ---------------------------------------------------------------------------------------------- facts
    def sparsity(self) -> float:
        """Fraction of masked-out weights over every entry."""
        total = sum(m.numel() for m in self.masks.values())
        return 1.0 - sum(int(m.sum()) for m in self.masks.values()) / max(1, total)

    def layer_sparsity(self) -> Dict[str, float]:
        return {k: 1.0 - float(m.float().mean()) for k, m in self.masks.items()}

    # ---------------------------------------------------------------------------------------------- files
    def save(self, folder: str | Path) -> Path:
        """Write ``masks.json`` and ``masks.safetensors`` into `folder` (atomically each)."""
        from ...io import atomic_write_text, save_tensors

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_tensors(folder / TENSOR_FILE, {k: pack_bits(v) for k, v in self.masks.items()},
                     metadata={"format": "packbits-uint8"})
        index = {"version": MASKS_VERSION, "format": "packbits-uint8 (numpy.packbits, row-major, big-endian bits)",
                 "entries": {k: {**asdict(e), "shape": list(e.shape)} for k, e in self.entries.items()},
                 "provenance": self.provenance}
        atomic_write_text(folder / INDEX_FILE, json.dumps(index, indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "MaskSet":
        """Read what `save` wrote; a missing, malformed or inconsistent file raises `CheckpointError`."""
        from ...io import load_tensors, read_json

        folder = Path(folder)
        path = folder / INDEX_FILE
        index = read_json(path, "pdp.MaskSet.load")
        try:
            if index.get("version", 0) > MASKS_VERSION:
                raise CheckpointError(f"{path}: mask version {index['version']} is newer than this prunekit reads")
            entries = {k: MaskEntry(**{**v, "shape": tuple(v["shape"])}) for k, v in index["entries"].items()}
        except (KeyError, TypeError) as exc:
            raise CheckpointError(f"{path}: malformed mask index ({exc})") from None
        packed = load_tensors(folder / TENSOR_FILE)
        missing = set(entries) - set(packed)
        if missing:
            raise CheckpointError(f"{folder / TENSOR_FILE}: no mask for {sorted(missing)[:5]}")
        masks = {k: unpack_bits(packed[k], e.shape) for k, e in entries.items()}
        for k, e in entries.items():
            if int(masks[k].sum()) != e.kept:
                raise CheckpointError(f"{folder / TENSOR_FILE}: mask '{k}' keeps {int(masks[k].sum())} weights, "
                                      f"the index says {e.kept} (corrupted)")
        return cls(entries, masks, index.get("provenance"))

    # ---------------------------------------------------------------------------------------------- models
    def _weight(self, model: nn.Module, e: MaskEntry) -> torch.Tensor:
        module = get_module(model, e.module)
        w = getattr(module, e.param, None)
        if not isinstance(w, torch.Tensor) or tuple(w.shape) != tuple(e.shape):
            got = None if not isinstance(w, torch.Tensor) else tuple(w.shape)
            raise ConfigError(f"MaskSet: '{e.name}' should be a tensor of shape {tuple(e.shape)}, the model has {got}")
        return w

    def apply(self, model: nn.Module) -> nn.Module:
        """Zero the masked-out weights of `model` in place (replay onto a freshly built model); returns it."""
        with torch.no_grad():
            for name, e in self.entries.items():
                w = self._weight(model, e)
                w.mul_(self.masks[name].to(w.device, w.dtype))
        return model

    def freeze(self, model: nn.Module) -> nn.Module:
        """Register a `FrozenMask` on every entry (weights stay dense tensors; masked ones get no gradient)."""
        for name, e in self.entries.items():
            w = self._weight(model, e)
            parametrize.register_parametrization(get_module(model, e.module), e.param,
                                                 FrozenMask(self.masks[name].to(w.device)))
        return model

    def verify(self, model: Optional[nn.Module] = None) -> Dict[str, Any]:
        """Check every claim: N:M entries keep exactly N of each group of M; with `model`, every masked-out weight
        is zero and every N:M group of the model's weight has at most N non-zeros.

        Returns:
            ``{"passed", "nm_entries", "nm_violations", "nonzero_masked", "layers": [...]}``.
        """
        layers: List[Dict[str, Any]] = []
        nm_bad = nonzero = 0
        for name, e in self.entries.items():
            keep = self.masks[name]
            row: Dict[str, Any] = {"name": name, "pattern": e.pattern if e.pattern != "nm" else f"{e.n}:{e.m}",
                                   "sparsity": 1.0 - float(keep.float().mean())}
            if e.pattern == "nm":
                row["nm_violations"] = nm_violations(keep, e)
                nm_bad += row["nm_violations"]
            if model is not None:
                w = self._weight(model, e).detach().cpu()
                row["nonzero_masked"] = int(((w != 0) & ~keep).sum())
                nonzero += row["nonzero_masked"]
                if e.pattern == "nm":
                    over = (to_groups(w != 0, e.in_dim, e.m).sum(-1) > e.n).sum()
                    row["model_nm_violations"] = int(over)
                    nm_bad += int(over)
            layers.append(row)
        return {"passed": nm_bad == 0 and nonzero == 0, "nm_entries": sum(e.pattern == "nm" for e in
                                                                         self.entries.values()),
                "nm_violations": nm_bad, "nonzero_masked": nonzero, "layers": layers}


def remove_masks(model: nn.Module) -> nn.Module:
    """Bake every parametrization of `model` into its plain weights (``leave_parametrized=True``); returns it."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for pname in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, pname, leave_parametrized=True)
    return model


