"""The weighted layers PreCrop reasons about, and how their sizes depend on the engine's channel groups.

Every convolution / linear weight of the model is one layer l with ``n_l`` weights and ``F_l = n_l * positions``
MACs per example. Its size after cropping is ``n_l * prod_g alpha_g ** e_lg``, where ``alpha_g`` is the width
multiplier of group g and ``e_lg`` counts the weight dimensions group g owns: 1 for the output channels, 1 for the
input channels, so a plain conv gets ``alpha_out * alpha_in`` and a depthwise conv, whose only group dimension is
its output (tied to its input by the engine), gets ``alpha`` alone (methods.md section 8, pitfalls). Groups the
engine cannot prune (the classifier's outputs, the input image) are fixed at alpha = 1.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from ..config import WidthConfig

_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class Layer:
    """One weighted layer.

    Attributes:
        name: qualified module name.
        weights: n_l, elements of the weight tensor.
        macs: F_l, multiply-accumulates of the weight per example (``weights * output positions``).
        groups: prunable group id -> exponent e_lg (1 per weight dimension the group owns).
    """

    name: str
    weights: int
    macs: int
    groups: Dict[str, int] = field(default_factory=dict)

    def scale(self, alpha: Dict[str, float]) -> float:
        """prod_g alpha_g ** e_lg: the fraction of this layer's weights (and MACs) a width choice keeps."""
        out = 1.0
        for gid, e in self.groups.items():
            out *= float(alpha.get(gid, 1.0)) ** e
        return out


def weighted_layers(model: nn.Module, analysis: Any, inputs: Any, forward_fn: Optional[Callable] = None
                    ) -> List[Layer]:
    """The conv / linear layers of `model` (in module order) with their group exponents and MACs.

    Args:
        model: the original model (not modified; one forward pass in eval mode under no_grad).
        analysis: `prunekit.analyze(model, inputs)`.
        inputs: example inputs (batch size B >= 1; MACs are per example).
    """
    from ...planning.steps import model_unchanged

    prunable = {g.id for g in analysis.groups if g.prunable}
    owner: Dict[tuple, str] = {}
    for g in analysis.groups:
        if g.id not in prunable:
            continue
        for m in g.members:
            if m.param == "weight" and m.role in ("out", "in"):
                owner[(m.module, m.dim)] = g.id
    positions: Dict[str, int] = {}
    handles = []

    def hook(name):
        def record(module, args, out):
            if isinstance(out, torch.Tensor) and out.dim() >= 2:
                per_example = out[0]
                if isinstance(module, nn.Linear):
                    positions[name] = int(per_example.numel() // out.shape[-1])
                else:
                    positions[name] = int(per_example[0].numel())
        return record

    modules = [(n, m) for n, m in model.named_modules() if isinstance(m, _WEIGHTED)]
    try:
        for name, module in modules:
            handles.append(module.register_forward_hook(hook(name)))
        with model_unchanged(model), torch.no_grad():
            model.eval()
            forward_fn(model, inputs) if forward_fn is not None else (
                model(**inputs) if isinstance(inputs, dict) else
                model(*inputs) if isinstance(inputs, tuple) else model(inputs))
    finally:
        for h in handles:
            h.remove()
    layers = []
    for name, module in modules:
        if name not in positions:  # not run by the example inputs: nothing to crop it by
            continue
        n = int(module.weight.numel())
        groups: Dict[str, int] = {}
        for dim in (0, 1):
            gid = owner.get((name, dim))
            if gid is not None:
                groups[gid] = groups.get(gid, 0) + 1
        layers.append(Layer(name, n, n * positions[name], groups))
    return layers


def variable_groups(layers: List[Layer]) -> List[str]:
    """Prunable group ids touching at least one layer, in first-appearance order."""
    seen: Dict[str, None] = {}
    for layer in layers:
        for gid in layer.groups:
            seen.setdefault(gid, None)
    return list(seen)


def total(layers: List[Layer], alpha: Optional[Dict[str, float]] = None, target: str = "params") -> float:
    """Sum over layers of ``n_l`` (or ``F_l`` for ``target="macs"``) times the kept fraction under `alpha`."""
    alpha = alpha or {}
    key = "weights" if target == "params" else "macs"
    return float(sum(getattr(layer, key) * layer.scale(alpha) for layer in layers))


def config_alpha(config: WidthConfig) -> Dict[str, float]:
    """The width multipliers (kept / size) of a config."""
    return config.fractions()
