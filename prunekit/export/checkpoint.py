"""Save and load pruned models: ``model.safetensors`` + ``plan.json`` (+ the original Hugging Face config), no pickle.

Folder layout written by `save` (atomically, see `folder.staged_folder`)::

    out/
      model.safetensors      the pruned weights
      plan.json              the pruning plan, how to build the original model, and the weights' SHA-256
      original_config.json   Hugging Face models only: the unpruned config and model class
      hf/                    Hugging Face models only: a save_pretrained folder (see `export.hf`)
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Optional

from torch import nn

from ..errors import CheckpointError
from ..prune.plan import PruningPlan
from .folder import staged_folder
from .model_spec import ORIGINAL_CONFIG, build_original, spec_for_save

WEIGHTS = "model.safetensors"
PLAN = "plan.json"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checkpoint(folder: Path, model: nn.Module, plan: PruningPlan, hf: bool = True) -> None:
    """Write the checkpoint files into an existing (staging) `folder`; `save` is the atomic wrapper."""
    from safetensors.torch import save_model

    from ..io import apply_umask, atomic_write_text

    folder = Path(folder)
    save_model(model, str(folder / WEIGHTS), metadata={"format": "pt"})
    apply_umask(folder / WEIGHTS)
    data = json.loads(plan.to_json())
    data["model_spec"] = spec_for_save(model, plan.model_spec, plan.model_fingerprint)
    data["weights"] = {"file": WEIGHTS, "sha256": sha256_file(folder / WEIGHTS)}
    original = getattr(model, "prunekit_original_config", None)
    if original is not None:
        atomic_write_text(folder / ORIGINAL_CONFIG, json.dumps(original, indent=1, default=str))
    atomic_write_text(folder / PLAN, json.dumps(data, indent=1))
    if hf and original is not None and hasattr(model, "save_pretrained"):
        _try_save_pretrained(model, plan, folder / "hf")


def _try_save_pretrained(model: nn.Module, plan: PruningPlan, folder: Path) -> None:
    """``hf/`` is a convenience beside the authoritative checkpoint: a model transformers cannot save is warned
    about, not fatal."""
    import shutil
    import warnings

    from .hf import save_pretrained

    try:
        save_pretrained(model, plan, folder)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types
        shutil.rmtree(folder, ignore_errors=True)
        warnings.warn(f"no Hugging Face folder written: save_pretrained failed ({type(exc).__name__}: {exc}); "
                      f"the checkpoint reloads with prunekit.load")


def save(model: nn.Module, plan: PruningPlan, out_dir: str | Path, hf: bool = True,
         extra: Optional[Callable[[Path], None]] = None) -> Path:
    """Write a pruned model's checkpoint folder atomically, with no pickle.

    Args:
        model: the pruned model (`prunekit.apply`'s result).
        plan: the plan it was pruned with.
        out_dir: the folder; an existing checkpoint there is replaced whole (a failure midway keeps it as it was).
            A file, an unwritable place, or a non-empty folder that is not a checkpoint is refused before writing.
        hf: for Hugging Face models also write ``hf/`` (a save_pretrained folder).
        extra: ``extra(staging_folder)`` writes more files (reports) into the same atomic folder.

    Returns:
        The folder.
    """
    with staged_folder(out_dir) as tmp:
        write_checkpoint(tmp, model, plan, hf=hf)
        if extra is not None:
            extra(tmp)
    return Path(out_dir)


def read_plan(out_dir: str | Path) -> tuple:
    """(PruningPlan, raw plan.json dict) of a checkpoint folder."""
    path = Path(out_dir) / PLAN
    plan = PruningPlan.load(path)
    return plan, json.loads(path.read_text())


def check_weights(out_dir: str | Path, raw_plan: dict) -> Path:
    """The weights file, after checking it against the SHA-256 recorded in plan.json (when recorded)."""
    weights = Path(out_dir) / WEIGHTS
    if not weights.exists():
        raise CheckpointError(f"missing weights file {weights}")
    expected = (raw_plan.get("weights") or {}).get("sha256")
    if expected is not None and sha256_file(weights) != expected:
        raise CheckpointError(f"{weights} does not match the checksum recorded in {Path(out_dir) / PLAN} "
                              f"(the file was modified or corrupted after saving)")
    return weights


def load(out_dir: str | Path, model: Optional[nn.Module] = None, forward_fn: Optional[Callable] = None,
         factory: Optional[Callable[..., nn.Module]] = None, allow_factory: Optional[str] = None) -> nn.Module:
    """Rebuild a pruned model: build (or take) the original architecture, replay the plan, load the weights.

    Nothing named by the checkpoint is imported or called: the original is built from `model`, a registry name, or
    the saved Hugging Face config (see `export.model_spec`). A plan naming a ``module:function`` factory is
    refused unless `factory` is that function or `allow_factory` is exactly its name.

    Args:
        out_dir: a folder written by `save` (or ``prunekit prune``).
        model: the unpruned architecture, if the caller builds it.
        forward_fn: how to call the model when tracing (as given to `plan`).
        factory / allow_factory: see above.

    Raises:
        CheckpointError: missing, modified (checksum) or mismatching weights.
        ConfigError: the plan names a factory the caller did not allow, or gives no way to build the original.
    """
    from safetensors.torch import load_model

    from ..api import apply

    out = Path(out_dir)
    plan, raw = read_plan(out)
    weights = check_weights(out, raw)
    if model is None:
        model = build_original(out, plan.model_spec or {}, factory=factory, allow_factory=allow_factory)
    model.eval()
    pruned = apply(model, plan, forward_fn=forward_fn, inplace=True, verify=False)
    try:
        missing, unexpected = load_model(pruned, str(weights), strict=False)
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a bad file
        raise CheckpointError(f"cannot read checkpoint {weights} (corrupted, or not made from this plan): {exc}") \
            from None
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {weights} does not match the pruned architecture: missing {missing[:8]}, "
                              f"unexpected {unexpected[:8]}")
    return pruned
