"""Where local data lives: one setting, overridable by ``PRUNEKIT_DATA``."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import DataNotFoundError

ENV_VAR = "PRUNEKIT_DATA"
CACHE_ENV_VAR = "PRUNEKIT_CACHE"


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def data_root() -> Path:
    """The local data folder: ``$PRUNEKIT_DATA`` or ``../shared/data`` beside the repository."""
    override = os.environ.get(ENV_VAR)
    return Path(override) if override else repo_root().parent / "shared" / "data"


def cache_root() -> Path:
    """Where derived artefacts (converted checkpoints, extracted archives) are cached."""
    override = os.environ.get(CACHE_ENV_VAR)
    root = Path(override) if override else Path.home() / ".cache" / "prunekit"
    root.mkdir(parents=True, exist_ok=True)
    return root


def data_file(relative: str, what: str = "") -> Path:
    """Path of a file under the data root; raises a clear error when it is missing."""
    path = data_root() / relative
    if not path.exists():
        label = f"{what} " if what else ""
        raise DataNotFoundError(
            f"missing {label}file '{relative}': looked for {path} "
            f"(data root {data_root()}; set {ENV_VAR} to point elsewhere)"
        )
    return path
