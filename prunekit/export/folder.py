"""Checkpoint folders written atomically: everything goes into a temporary sibling folder that is renamed into place.

A reader therefore sees either the earlier checkpoint or the new one, never a mix (no stale ``hf/`` beside new
weights, no ``plan.json`` without its weights); a failure midway leaves the earlier checkpoint as it was. The
destination is checked before any work, and files get the permissions the user's umask gives (not ``0600``).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from ..errors import ConfigError
from ..io import apply_umask

# a folder holding one of these is a prunekit model folder, which may be replaced whole
CHECKPOINT_MARKERS = ("plan.json", "model.safetensors")


def check_destination(out_dir: str | Path) -> Path:
    """Refuse, before any work, a destination that cannot become a checkpoint folder.

    Raises:
        ConfigError: `out_dir` is a file; its parent cannot be created or written; or it is a non-empty folder that
            is not a prunekit checkpoint (replacing it would delete the user's files).
    """
    out = Path(out_dir).expanduser()
    if Path.cwd().resolve().is_relative_to(out.resolve()):
        raise ConfigError(f"output folder {out} is (or contains) the current folder; prunekit replaces its output "
                          f"folder whole, so pass a new folder")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output folder {out} is a file; pass another output folder")
    if out.is_dir() and any(out.iterdir()) and not any((out / m).exists() for m in CHECKPOINT_MARKERS):
        raise ConfigError(f"output folder {out} is not empty and holds no prunekit checkpoint (plan.json, "
                          f"model.safetensors); prunekit replaces its output folder whole, so pass a new or empty "
                          f"folder")
    parent = out.absolute().parent
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"cannot create output folder {out}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write output folder {out}: {existing} is not writable")
    return out


@contextlib.contextmanager
def staged_folder(out_dir: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `out_dir`; on success it replaces `out_dir` whole.

    Example:
        with staged_folder("out") as tmp:
            (tmp / "a.txt").write_text("...")   # out/ appears (or is replaced) only when the block ends well
    """
    out = check_destination(out_dir)
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.absolute().parent))
    try:
        apply_umask(tmp, directory=True)
        yield tmp
        _replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _replace_dir(new: Path, out: Path) -> None:
    """Move `new` onto `out`. The old folder is renamed aside first (folders cannot be replaced in one rename) and
    put back if the second rename fails, then deleted."""
    if not out.exists():
        os.rename(new, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.absolute().parent))
    os.rmdir(old)
    os.rename(out, old)
    try:
        os.rename(new, out)
    except OSError:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path with the same file name (exporters check suffixes) in a folder beside `path`; on
    success it is moved onto `path`, so a failed export never leaves a partial file."""
    path = Path(path)
    path.absolute().parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.absolute().parent))
    try:
        yield tmp / path.name
        apply_umask(tmp / path.name)
        os.replace(tmp / path.name, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
