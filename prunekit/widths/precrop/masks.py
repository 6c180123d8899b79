"""Unstructured keep-masks at initialisation (the baselines of the PreCrop paper), kept in place as fixed masks.

The masks are registered as parametrizations, the engine's soft mode (`prunekit.prune.soft` masks whole channels
the same way): the layer computes with ``weight * mask``, so masked weights stay exactly zero during training and
get no gradient. `fold_weight_masks` bakes them into plain (dense, zero-filled) weights, which is how such a network
runs on commodity hardware: at the dense speed.
"""
from __future__ import annotations

from typing import Dict, List

import torch
from torch import nn
from torch.nn.utils import parametrize

from ...errors import ConfigError
from .layers import Layer


class WeightMask(nn.Module):
    """Multiplies a weight by a fixed 0/1 mask of its own shape."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.to(torch.float32))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask.to(weight.dtype)


def random_masks(layers: List[Layer], densities: Dict[str, float], shapes: Dict[str, torch.Size], seed: int = 0
                 ) -> Dict[str, torch.Tensor]:
    """Per layer, exactly ``round(p_l * n_l)`` (at least 1) weights kept uniformly at random: {layer: bool mask}.

    The PreCrop paper's central test: the same layer densities, no scores."""
    gen = torch.Generator().manual_seed(int(seed))
    out = {}
    for layer in layers:
        p = densities.get(layer.name)
        if p is None:
            continue
        n = layer.weights
        k = min(n, max(1, int(round(p * n))))
        flat = torch.zeros(n, dtype=torch.bool)
        flat[torch.randperm(n, generator=gen)[:k]] = True
        out[layer.name] = flat.reshape(shapes[layer.name])
    return out


def apply_weight_masks(model: nn.Module, masks: Dict[str, torch.Tensor]) -> nn.Module:
    """Register `masks` (layer name -> bool mask of the weight's shape) on `model`'s weights, in place."""
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        module = modules.get(name)
        if module is None or not isinstance(getattr(module, "weight", None), torch.Tensor):
            raise ConfigError(f"precrop masks: module '{name}' has no weight")
        if tuple(mask.shape) != tuple(module.weight.shape):
            raise ConfigError(f"precrop masks: mask of '{name}' has shape {tuple(mask.shape)}, the weight "
                              f"{tuple(module.weight.shape)}")
        parametrize.register_parametrization(module, "weight", WeightMask(mask))
    return model


def fold_weight_masks(model: nn.Module) -> nn.Module:
    """Bake the masks into plain weights (zeros where masked) and drop the parametrizations, in place."""
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight") and any(
                isinstance(p, WeightMask) for p in module.parametrizations["weight"]):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model


def masked_densities(model: nn.Module, names: List[str]) -> Dict[str, float]:
    """Fraction of non-zero entries of each named layer's (effective) weight."""
    modules = dict(model.named_modules())
    return {n: float((modules[n].weight != 0).float().mean()) for n in names}


def nonzero_parameters(model: nn.Module) -> int:
    """Parameters that are not masked out (effective weights counted after masking)."""
    seen, count = set(), 0
    for module in model.modules():
        for pname, p in list(module._parameters.items()):
            if p is None or id(p) in seen:
                continue
            seen.add(id(p))
            count += int((p != 0).sum())
        if parametrize.is_parametrized(module, "weight"):
            original = module.parametrizations["weight"].original
            seen.add(id(original))
            count += int((module.weight != 0).sum())
    return count
