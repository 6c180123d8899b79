"""Saving and reloading a `DynamicChannelModel` without pickle: ``model.safetensors`` plus ``dynamic.json``."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, Optional

from torch import nn

from ..errors import CheckpointError
from ..io import atomic_write_text, load_state_dict_strict, load_tensors, read_json, save_tensors
from .model import DynamicChannelModel, DynamicConfig
from .sites import MaskSite

FORMAT_VERSION = 1
META_FILE = "dynamic.json"
WEIGHTS_FILE = "model.safetensors"


def save_dynamic(dyn: DynamicChannelModel, folder: str | Path, model_spec: Optional[Dict[str, Any]] = None) -> Path:
    """Write the weights (backbone and predictors) and the sites / config as JSON, atomically.

    Args:
        dyn: the dynamic model.
        folder: output folder (created).
        model_spec: how to rebuild the backbone: ``{"registry": name, "kwargs": {...}}`` (a `prunekit.models` name).
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    save_tensors(out / WEIGHTS_FILE, dyn.state_dict())
    meta = {"format": "prunekit.dynamic", "version": FORMAT_VERSION, "config": dataclasses.asdict(dyn.config),
            "input_shape": list(dyn.input_shape), "sites": [s.to_dict() for s in dyn.sites], "dense": dyn.dense,
            "model_spec": dict(model_spec or {})}
    atomic_write_text(out / META_FILE, json.dumps(meta, indent=2))
    return out


def load_dynamic(folder: str | Path, backbone: Optional[nn.Module] = None) -> DynamicChannelModel:
    """Rebuild a saved dynamic model: the backbone (from `backbone` or the saved registry spec), its predictors,
    the saved weights (strictly). Returned in eval mode."""
    folder = Path(folder)
    meta_path = folder / META_FILE
    meta = read_json(meta_path, "dynamic")
    try:
        if meta.get("format") != "prunekit.dynamic" or int(meta.get("version", 0)) > FORMAT_VERSION:
            raise CheckpointError(f"dynamic: {meta_path} is not a prunekit dynamic model of version <= "
                                  f"{FORMAT_VERSION}")
        config = DynamicConfig(**meta["config"])
        sites = [MaskSite.from_dict(s) for s in meta["sites"]]
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"dynamic: cannot read {meta_path}: {exc}") from None
    if backbone is None:
        spec = meta.get("model_spec") or {}
        if "registry" not in spec:
            raise CheckpointError(f"dynamic: {meta_path} does not say how to build the backbone; pass backbone=...")
        from ..models import build

        backbone = build(spec["registry"], pretrained=False, **spec.get("kwargs", {}))
    dyn = DynamicChannelModel(backbone.eval(), sites, config, meta.get("dense"), tuple(meta["input_shape"]))
    load_state_dict_strict(dyn, load_tensors(folder / WEIGHTS_FILE), f"dynamic weights {folder / WEIGHTS_FILE}")
    dyn.supervise = False
    return dyn.eval()
