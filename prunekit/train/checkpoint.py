"""Training checkpoints without pickle: safetensors for tensors, JSON for everything else.

A checkpoint is one folder ``<checkpoint_dir>/step-00000120/`` holding

- ``model.safetensors``: the model's ``state_dict`` (tied tensors are stored as separate copies);
- ``state.safetensors``: optimizer state tensors (flattened as ``optim.<param id>.<name>``), extra tensors of the
  training hooks (``hook<i>.<name>``) and the random-number-generator states as uint8 tensors (``rng.*``);
- ``state.json``: step, epoch, running sums, the optimizer index (which keys hold which state entries, plus the
  non-tensor values and the param groups) and the non-tensor parts of the numpy / Python RNG states.

The folder is first written under a hidden temporary name and then renamed, so a crash never leaves a partial
checkpoint under a real name; `latest_checkpoint` only ever sees complete folders.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..errors import CheckpointError
from ..io import load_state_dict_strict, load_tensors, save_tensors

FORMAT_VERSION = 1
_DIR_RE = re.compile(r"^step-(\d{8,})$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def list_checkpoints(checkpoint_dir: str | Path) -> List[Path]:
    """Complete checkpoint folders under `checkpoint_dir`, oldest first."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _DIR_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(checkpoint_dir: str | Path) -> Optional[Path]:
    items = list_checkpoints(checkpoint_dir)
    return items[-1] if items else None


# --------------------------------------------------------------------------- RNG states


def _u8(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array).view(np.uint8).copy())


def rng_state() -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Every RNG state as (uint8 tensors, JSON-able extras)."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    _, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy"] = _u8(np.asarray(keys, dtype=np.uint32))
    version, internal, gauss_next = random.getstate()
    tensors["rng.python"] = _u8(np.asarray(internal, dtype=np.uint32))
    extras = {"numpy": [int(pos), int(has_gauss), float(cached)], "python": [version, gauss_next]}
    return tensors, extras


def set_rng_state(tensors: Dict[str, torch.Tensor], extras: Dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted(k for k in tensors if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        states = [tensors[k] for k in cuda][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(states)
    pos, has_gauss, cached = extras["numpy"]
    keys = tensors["rng.numpy"].numpy().view(np.uint32)
    np.random.set_state(("MT19937", keys, pos, has_gauss, cached))
    version, gauss_next = extras["python"]
    internal = tuple(int(v) for v in tensors["rng.python"].numpy().view(np.uint32))
    random.setstate((version, internal, gauss_next))


# --------------------------------------------------------------------------- optimizer flattening


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    raise CheckpointError(f"checkpoint: optimizer value of type {type(value).__name__} is not serialisable")


def flatten_optimizer(state: Dict[str, Any]) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors and a JSON index."""
    tensors: Dict[str, torch.Tensor] = {}
    index: Dict[str, Any] = {"state": {}, "param_groups": []}
    for pid, entries in state["state"].items():
        slot = {}
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                key = f"optim.{pid}.{name}"
                tensors[key] = value
                slot[name] = {"tensor": key}
            else:
                slot[name] = {"value": _jsonable(value)}
        index["state"][str(pid)] = slot
    for g, group in enumerate(state["param_groups"]):
        entry = {}
        for name, value in group.items():
            if isinstance(value, torch.Tensor):
                key = f"optim.group{g}.{name}"
                tensors[key] = value
                entry[name] = {"tensor": key}
            else:
                entry[name] = {"value": _jsonable(value)}
        index["param_groups"].append(entry)
    return tensors, index


def unflatten_optimizer(tensors: Dict[str, torch.Tensor], index: Dict[str, Any]) -> Dict[str, Any]:
    def read(item: Dict[str, Any]) -> Any:
        if "tensor" in item:
            return tensors[item["tensor"]]
        return item["value"]

    state = {int(pid): {n: read(v) for n, v in slot.items()} for pid, slot in index["state"].items()}
    groups = []
    for entry in index["param_groups"]:
        group = {n: read(v) for n, v in entry.items()}
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


# --------------------------------------------------------------------------- save / load


def save_checkpoint(
    checkpoint_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    progress: Dict[str, Any],
    hook_tensors: Optional[Dict[str, torch.Tensor]] = None,
    keep_last: int = 2,
) -> Path:
    """Write a checkpoint folder atomically and prune old ones.

    Args:
        checkpoint_dir: parent folder.
        step: global optimizer step completed (names the folder).
        model: the unwrapped model.
        optimizer: its optimizer.
        progress: JSON-able loop counters (epoch, step in epoch, running sums, config).
        hook_tensors: extra tensors of the training hooks, keys already prefixed.
        keep_last: keep this many newest checkpoints (0 keeps all).

    Returns:
        The checkpoint folder.
    """
    root = Path(checkpoint_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        model_tensors = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        save_tensors(tmp / "model.safetensors", model_tensors)
        optim_tensors, optim_index = flatten_optimizer(optimizer.state_dict())
        rng_tensors, rng_extras = rng_state()
        state_tensors = {**optim_tensors, **rng_tensors, **(hook_tensors or {})}
        save_tensors(tmp / "state.safetensors", {k: v.detach().cpu().clone() for k, v in state_tensors.items()})
        meta = {
            "format": "prunekit-train-checkpoint",
            "version": FORMAT_VERSION,
            "step": step,
            "progress": progress,
            "optimizer": optim_index,
            "rng": rng_extras,
            "hook_keys": sorted((hook_tensors or {}).keys()),
        }
        (tmp / "state.json").write_text(json.dumps(meta, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if keep_last > 0:
        for old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def read_checkpoint(path: str | Path) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor], Dict[str, Any]]:
    """Read (model tensors, state tensors, JSON metadata); anything malformed raises `CheckpointError`."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {path}")
    try:
        meta = json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path / 'state.json'} (missing or corrupted): {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != "prunekit-train-checkpoint":
        raise CheckpointError(f"{path / 'state.json'} is not a prunekit training checkpoint")
    model_tensors = load_tensors(path / "model.safetensors")
    state_tensors = load_tensors(path / "state.safetensors")
    needed = [k for k in meta.get("hook_keys", []) if k not in state_tensors] + [
        k for k in ("rng.torch", "rng.numpy", "rng.python") if k not in state_tensors
    ]
    if needed:
        raise CheckpointError(f"checkpoint {path}: state.safetensors lacks {needed[:5]}")
    return model_tensors, state_tensors, meta


def load_checkpoint(
    path: str | Path, model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer] = None
) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor]]:
    """Restore model, optimizer and RNG states from a checkpoint folder.

    Returns:
        (the JSON metadata, the hook tensors keyed as saved).
    """
    model_tensors, state_tensors, meta = read_checkpoint(path)
    load_state_dict_strict(model, model_tensors, source=f"checkpoint {path}")
    try:
        if optimizer is not None:
            optimizer.load_state_dict(unflatten_optimizer(state_tensors, meta["optimizer"]))
        set_rng_state(state_tensors, meta["rng"])
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {path}: optimizer or RNG state does not match this run: {exc}") from None
    hook_tensors = {k: state_tensors[k] for k in meta.get("hook_keys", [])}
    return meta, hook_tensors
