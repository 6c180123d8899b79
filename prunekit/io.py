"""Safe reading and atomic writing of checkpoints. Nothing here unpickles arbitrary objects."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch

from .errors import CheckpointError


def current_umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: str | Path, directory: bool = False) -> None:
    """Give `path` the mode a plain ``open()`` / ``mkdir()`` would (``mkstemp`` / ``mkdtemp`` make 0600 / 0700)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then rename onto `path`, so a crash never leaves a half-written file. The file gets
    the permissions of the user's umask."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        apply_umask(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def save_tensors(path: str | Path, tensors: Dict[str, torch.Tensor], metadata: Optional[Dict[str, str]] = None) -> Path:
    """Write tensors as safetensors, atomically."""
    from safetensors.torch import save_file

    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(clean, tmp, metadata=metadata))


def load_tensors(path: str | Path) -> Dict[str, torch.Tensor]:
    """Read a safetensors file or a torch file with ``weights_only=True``; corrupt files raise `CheckpointError`."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path} (corrupted or not a checkpoint): {exc}") from None
    return obj


def read_json(path: str | Path, what: str) -> Any:
    """Parse the JSON file `path` (an artifact's metadata or index).

    Args:
        path: the file.
        what: the module or operation reading it, named in the errors (e.g. ``"dynamic"``).
    Raises:
        CheckpointError: the file is missing or is not valid JSON.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what}: no {path.name} in {path.parent}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{what}: cannot read {path}, malformed JSON: {exc}") from None


def safetensors_metadata(path: str | Path) -> Dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path} (corrupted or not a safetensors file): {exc}") from None


def load_state_dict_strict(model: torch.nn.Module, state: Dict[str, Any], source: str = "checkpoint") -> None:
    """Load `state` into `model`, explaining any mismatch of keys or shapes by name."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        lines = [f"{source} does not match {type(model).__name__}:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {missing[:10]}{' ...' if len(missing) > 10 else ''}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}")
        if shapes:
            lines.append(f"  shape mismatches ({len(shapes)}): {shapes[:10]}")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state, strict=True)
