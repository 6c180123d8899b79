"""Build the ORIGINAL (unpruned) architecture a checkpoint's plan replays onto, only from sources the loading user
chose. A checkpoint is untrusted data: nothing here imports a module or calls a function because a file names it.

Sources, in order:
  * ``model=`` passed by the caller;
  * ``{"checkpoint": folder}``: another pruned folder (a model pruned again), loaded by these same rules;
  * ``{"registry": name, "kwargs": {...}}``: a `prunekit.models` registry entry (JSON keyword arguments only);
  * ``original_config.json`` beside the weights: a Hugging Face config rebuilt with the ``transformers`` class it
    names, through ``from_config`` (only classes ``transformers`` itself exports; never ``trust_remote_code``);
  * ``{"factory": "module:function"}``: only when the caller passes that callable (``factory=``) or allows exactly
    that name (``allow_factory="module:function"``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..prune.plan import model_fingerprint

ORIGINAL_CONFIG = "original_config.json"
_JSON_SCALARS = (str, int, float, bool, type(None))
_LOADING: set = set()  # checkpoint folders being loaded as another one's original (guards against loops)


def tag_registry_model(model: nn.Module, name: str, kwargs: Dict[str, Any]) -> nn.Module:
    """Remember on `model` how the registry built it, so `save` can record it when the plan does not say."""
    if _plain_json(kwargs):
        spec = {"registry": name, **({"kwargs": dict(kwargs)} if kwargs else {})}
        object.__setattr__(model, "prunekit_model_spec", {**spec, "fingerprint": model_fingerprint(model)})
    return model


def spec_for_save(model: nn.Module, plan_spec: Dict[str, Any], fingerprint: str) -> Dict[str, Any]:
    """The spec to write into plan.json: the plan's own, else the registry tag of the model the plan was made for."""
    if plan_spec:
        return dict(plan_spec)
    tag = getattr(model, "prunekit_model_spec", None)
    if isinstance(tag, dict) and tag.get("fingerprint") == fingerprint:
        return {k: v for k, v in tag.items() if k != "fingerprint"}
    return {}


def remember_hf_config(model: nn.Module) -> None:
    """Keep the Hugging Face config (and model class) `model` has now on it, for `save`: called just before the
    config is rewritten for the pruned shapes, it is the config of the original the plan replays onto."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict") and _is_transformers_model(type(model)):
        object.__setattr__(model, "prunekit_original_config", {"class": type(model).__name__,
                                                               "config": config.to_dict()})


def build_original(folder: Path, spec: Dict[str, Any], factory: Optional[Callable[..., nn.Module]] = None,
                   allow_factory: Optional[str] = None) -> nn.Module:
    """The unpruned architecture, in eval mode, from the first source the user allows (see module docstring)."""
    kwargs = spec.get("kwargs", {}) or {}
    if not isinstance(kwargs, dict) or not _plain_json(kwargs):
        raise CheckpointError(f"{folder}/plan.json: model_spec.kwargs must be a JSON object of plain values")
    if "checkpoint" in spec:  # pruned again from a pruned folder: that folder, loaded by the same rules
        from .checkpoint import load

        source = Path(str(spec["checkpoint"])).resolve()
        if source in _LOADING or len(_LOADING) >= 16:
            raise CheckpointError(f"{folder}/plan.json: the chain of checkpoint folders loops or is too long "
                                  f"(at {source})")
        _LOADING.add(source)
        try:
            return load(source, factory=factory, allow_factory=allow_factory).eval()
        finally:
            _LOADING.discard(source)
    if "registry" in spec:
        import warnings

        from ..models import build

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "no pretrained weights" warnings do not apply: weights come next
            return build(str(spec["registry"]), pretrained=False, **kwargs).eval()
    if (folder / ORIGINAL_CONFIG).exists():
        return build_hf_from_config_file(folder / ORIGINAL_CONFIG)
    if "factory" in spec:
        name = str(spec["factory"])
        if factory is not None:
            return factory(**kwargs).eval()
        if allow_factory == name:
            return _import_factory(name)(**kwargs).eval()
        raise ConfigError(
            f"{folder}/plan.json asks to build the original model by calling '{name}'"
            f"{f' with {kwargs}' if kwargs else ''}. prunekit never runs code named by a checkpoint: if you trust "
            f"this folder, pass prunekit.load(folder, allow_factory={name!r}) (CLI: --allow-factory {name}), or "
            f"the function itself (factory=...), or the built model (model=...)")
    if "hf_folder" in spec:  # older checkpoints: the config of the folder the model was pruned from
        path = Path(str(spec["hf_folder"])) / "config.json"
        if path.exists():
            return build_hf_from_config_file(path)
    raise ConfigError(f"{folder}/plan.json does not say how to build the original model (no registry name, no "
                      f"{ORIGINAL_CONFIG}); pass model=... (the unpruned architecture)")


def build_hf_from_config_file(path: Path) -> nn.Module:
    """A `transformers` model with random weights from a config JSON, without any remote code.

    The JSON is either ``{"class": "LlamaForCausalLM", "config": {...}}`` (what `save` writes) or a plain
    ``config.json`` whose ``architectures`` names the class.
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read Hugging Face config {path}: {exc}") from None
    if "config" in data and "class" in data:
        cls_name, config_dict = data["class"], data["config"]
    else:
        cls_name, config_dict = (data.get("architectures") or [None])[0], data
    import transformers

    cls = getattr(transformers, str(cls_name), None) if cls_name else None
    if not isinstance(cls, type) or not _is_transformers_model(cls):
        raise CheckpointError(f"{path}: '{cls_name}' is not a model class of the transformers library")
    model_type = config_dict.get("model_type")
    try:
        config = transformers.AutoConfig.for_model(model_type, **{k: v for k, v in config_dict.items()
                                                                  if k not in ("model_type", "auto_map")})
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild a '{model_type}' config: {exc}") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the weights are replaced by the checkpoint's; seeded so nothing else varies
        model = cls(config)
    return model.float().eval()


def _is_transformers_model(cls: type) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return False
    return issubclass(cls, PreTrainedModel) and cls.__module__.startswith("transformers.")


def _import_factory(name: str) -> Callable[..., nn.Module]:
    import importlib

    module, _, attr = name.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"cannot import model factory '{name}': {exc}") from None


def _plain_json(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_json(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_plain_json(v) for v in value)
    return isinstance(value, _JSON_SCALARS)


def pruned_folder_origin(path: str, depth: int = 0) -> Optional[str]:
    """For a pruned checkpoint folder, the registry name of the model it was (first) pruned from; else None."""
    folder = Path(path)
    if depth > 16 or not (folder / "plan.json").is_file():
        return None
    try:
        spec = json.loads((folder / "plan.json").read_text()).get("model_spec") or {}
    except (OSError, json.JSONDecodeError):
        return None
    if "checkpoint" in spec and Path(str(spec["checkpoint"])) != folder:
        return pruned_folder_origin(str(spec["checkpoint"]), depth + 1)
    return str(spec["registry"]) if "registry" in spec else None
