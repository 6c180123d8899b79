"""Hugging Face folders of pruned models: ``save_pretrained`` beside the plan, and a loader for every width layout.

A Hugging Face config holds one width per kind (one head count, one intermediate size). A uniformly pruned model's
config is rewritten to its new widths, so ``AutoModel*.from_pretrained(folder)`` rebuilds it. When layers were pruned
to different widths the config cannot say so; the folder then also holds ``prunekit_plan.json`` and
``prunekit_original_config.json``, and `load_pretrained` rebuilds the model from those (it handles both cases)::

    from prunekit.export import load_pretrained
    model = load_pretrained("out/hf")          # uniform or not; plain from_pretrained works when uniform
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from torch import nn

from ..errors import CheckpointError
from ..prune.plan import PruningPlan

HF_PLAN = "prunekit_plan.json"
HF_ORIGINAL_CONFIG = "prunekit_original_config.json"


def is_nonuniform(model: nn.Module) -> bool:
    return bool(getattr(getattr(model, "config", None), "prunekit_nonuniform", None))


def save_pretrained(model: nn.Module, plan: Optional[PruningPlan], folder: str | Path) -> Path:
    """``model.save_pretrained(folder)`` (safetensors), plus the plan and the original config for `load_pretrained`.

    Args:
        model: a pruned `transformers` model.
        plan: its plan (needed to reload non-uniform widths; may be None for a uniform model).
        folder: a new folder (written inside a checkpoint's staging folder by `save`).
    """
    from ..io import atomic_write_text

    folder = Path(folder)
    model.save_pretrained(str(folder), safe_serialization=True)
    original = getattr(model, "prunekit_original_config", None)
    if plan is not None and original is not None:
        atomic_write_text(folder / HF_PLAN, plan.to_json())
        atomic_write_text(folder / HF_ORIGINAL_CONFIG, json.dumps(original, indent=1, default=str))
    elif is_nonuniform(model):
        raise CheckpointError("a model pruned to different widths per layer needs its plan and original config "
                              "to be saved as a Hugging Face folder (pass the plan)")
    return folder


def load_pretrained(folder: str | Path) -> nn.Module:
    """Load a folder written by `save_pretrained`, uniform or not, in eval mode; no remote code is run.

    Uniform widths: the class named by ``config.json`` (a ``transformers`` class) with ``from_pretrained``.
    Non-uniform widths: the original built from ``prunekit_original_config.json``, the plan replayed, then the
    weights of ``model.safetensors`` loaded.
    """
    import transformers

    from .model_spec import _is_transformers_model, build_hf_from_config_file

    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.exists():
        raise CheckpointError(f"{folder} is not a Hugging Face folder (no config.json)")
    config = json.loads(config_path.read_text())
    if not config.get("prunekit_nonuniform"):
        name = (config.get("architectures") or [None])[0]
        cls = getattr(transformers, str(name), None)
        if not isinstance(cls, type) or not _is_transformers_model(cls):
            raise CheckpointError(f"{config_path}: '{name}' is not a model class of the transformers library")
        return cls.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False).float().eval()
    from safetensors.torch import load_model

    from ..api import apply

    if not (folder / HF_PLAN).exists() or not (folder / HF_ORIGINAL_CONFIG).exists():
        raise CheckpointError(f"{folder}: widths differ per layer ({config['prunekit_nonuniform']}) but the folder "
                              f"lacks {HF_PLAN} / {HF_ORIGINAL_CONFIG} to rebuild them")
    original = build_hf_from_config_file(folder / HF_ORIGINAL_CONFIG)
    pruned = apply(original, PruningPlan.load(folder / HF_PLAN), inplace=True, verify=False)
    try:
        missing, unexpected = load_model(pruned, str(folder / "model.safetensors"), strict=False)
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a bad file
        raise CheckpointError(f"cannot read {folder / 'model.safetensors'}: {exc}") from None
    if missing or unexpected:
        raise CheckpointError(f"{folder}: weights do not match the pruned architecture: missing {missing[:8]}, "
                              f"unexpected {unexpected[:8]}")
    return pruned.eval()
