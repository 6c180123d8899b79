"""Resolve a model given on the command line: a registry name, ``module:function``, or a Hugging Face folder."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from ..errors import ConfigError


def resolve_model(spec: str, pretrained: bool = True, allow_factory: bool = False,
                  key: str = "model") -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """Returns (model in eval mode, a JSON spec that rebuilds the original architecture).

    Args:
        spec: a registry name, a Hugging Face folder, or ``module:function``.
        pretrained: load the registry model's pretrained weights.
        allow_factory: whether a ``module:function`` spec may be imported and called. Only a name the user typed on
            the command line itself (``--model``) is trusted: a config file is data, and importing code it names would
            let a shared YAML run anything (``model: os:system``).
        key: the config key `spec` came from, named in the refusal.

    Raises:
        ConfigError: an unknown model, or a factory that `allow_factory` does not allow.
    """
    from ..models import MODELS, build

    if spec in MODELS:
        return build(spec, pretrained=pretrained).eval(), {"registry": spec}
    path = Path(spec)
    if path.is_dir() and (path / "config.json").exists():
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(path, local_files_only=True)
        archs = getattr(config, "architectures", None) or []
        loader = AutoModelForCausalLM if any(a.endswith("ForCausalLM") for a in archs) else AutoModel
        model = loader.from_pretrained(path, local_files_only=True, dtype=torch.float32)
        return model.eval(), {"hf_folder": str(path.resolve())}
    if ":" in spec:
        if not allow_factory:
            raise ConfigError(
                f"config key '{key}' names the factory '{spec}' (module:function), which would import and call code; "
                f"a factory is used only when named on the command line itself: pass --{key.replace('_', '-')} "
                f"{spec} (never from a config file)")
        mod, _, fn = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"cannot import model factory '{spec}': {exc}") from None
        return factory().eval(), {"factory": spec}
    MODELS.get(spec)  # raises with the list of known names
    raise ConfigError(f"unknown model '{spec}'")


def example_inputs_for(spec: str, model: torch.nn.Module, input_shape: Optional[str], tokens: Optional[str]) -> Any:
    """Example inputs: from the command line, from the registry, or for a Hugging Face model a token batch."""
    if input_shape:
        return torch.randn([int(s) for s in input_shape.split(",")], generator=torch.Generator().manual_seed(0))
    if tokens:
        shape = [int(s) for s in tokens.split(",")]
        vocab = getattr(getattr(model, "config", None), "vocab_size", 100)
        return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(0))
    from ..models import MODELS, example_inputs

    if spec in MODELS:
        return example_inputs(spec)
    if getattr(model, "config", None) is not None and hasattr(model.config, "vocab_size"):
        return torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    raise ConfigError("cannot guess example inputs for this model: pass --input-shape 1,3,224,224 or --tokens 2,16")


def is_pruned_folder(spec: str) -> bool:
    """Whether `spec` names a checkpoint folder written by `prunekit prune` / prunekit.save."""
    return (Path(spec) / "plan.json").is_file()


def load_pruned_folder(spec: str, allow_factory: Optional[str] = None) -> Tuple[torch.nn.Module, Optional[str], Any]:
    """(pruned model in eval mode, the registry name it was pruned from or None, the plan) of a checkpoint folder.

    The model is rebuilt by `prunekit.load`, which never runs code the folder names (unless `allow_factory`).
    """
    from ..export import load, read_plan

    plan, _ = read_plan(spec)
    model = load(spec, allow_factory=allow_factory).eval()
    registry = plan.model_spec.get("registry") if isinstance(plan.model_spec, dict) else None
    return model, registry, plan
