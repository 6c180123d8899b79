"""Fold an inference-mode BatchNorm into the conv / linear layer that feeds it.

BN(W x + b) = (gamma / sqrt(var + eps)) * (W x + b - mean) + beta, so the fused layer has weight
W * gamma / sqrt(var + eps) (per output channel) and bias beta + (b - mean) * gamma / sqrt(var + eps).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import nn

from ..errors import ConfigError


def folded_weight_bias(layer: nn.Module, bn: Optional[nn.Module]) -> Tuple[torch.Tensor, torch.Tensor]:
    """The fused (weight [C_out, ...], bias [C_out]) of `layer` followed by `bn` (None: the layer alone), float64."""
    w = layer.weight.detach().double()
    b = layer.bias.detach().double() if getattr(layer, "bias", None) is not None else torch.zeros(w.shape[0],
                                                                                                  dtype=torch.float64)
    if bn is None:
        return w, b
    factor = bn.weight.detach().double() / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    return w * factor.view(-1, *([1] * (w.dim() - 1))), bn.bias.detach().double() + (
        b - bn.running_mean.detach().double()) * factor


def fold_batchnorm(model: nn.Module, follower: Dict[str, str]) -> None:
    """Fuse each BatchNorm into its producer in place and replace the BN module with ``nn.Identity``.

    Args:
        model: eval-mode network.
        follower: producer module name -> BN module name (`prunekit.compensate.probe.Probe.follower`).
    """
    modules = dict(model.named_modules())
    for layer_name, bn_name in follower.items():
        layer, bn = modules.get(layer_name), modules.get(bn_name)
        if layer is None or bn is None:
            raise ConfigError(f"fold_batchnorm: module '{layer_name}' or '{bn_name}' not found")
        if isinstance(bn, nn.Identity):
            continue
        if bn.weight.shape[0] != layer.weight.shape[0]:
            raise ConfigError(f"fold_batchnorm: BN '{bn_name}' has {bn.weight.shape[0]} channels, its producer "
                              f"'{layer_name}' {layer.weight.shape[0]}")
        w, b = folded_weight_bias(layer, bn)
        with torch.no_grad():
            layer.weight.copy_(w.to(layer.weight.dtype))
            if layer.bias is None:
                layer.bias = nn.Parameter(b.to(layer.weight.dtype))
            else:
                layer.bias.copy_(b.to(layer.bias.dtype))
        parent_name, _, attr = bn_name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        setattr(parent, attr, nn.Identity())
