"""Which channel groups UDFC-style compensation can handle, read from the engine's groups and the probe.

A group is *compensable* when its channels are produced by exactly one conv / linear layer followed directly by a
BatchNorm (the moments come from that BN), and every layer that consumes them is a plain (groups = 1) conv or a
linear reading ``ReLU(BN(...))`` of that very BN (pools and flatten between them are allowed). Anything else gets a
reason: several producers (channels coupled across residual adds, whose consumers read a sum no single BN
describes), an activation without closed-form moments (SiLU, GELU: refused by name), a consumer that is not a
plain conv / linear, a consumer reading several positions per channel.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch
from torch import nn

from ..graph.types import ChannelGroup
from .probe import Probe

_ALLOWED_AFTER = ("max_pool", "avg_pool", "adaptive_avg_pool", "adaptive_max_pool", "dropout", "flatten",
                  "contiguous", "clone", "max_pool2d_with_indices", "boolean_dispatch")


@dataclass
class CompensableLayer:
    """A group the closed form applies to.

    Attributes:
        group: the engine's group id.
        producer / bn: the conv (or linear) making the channels and the BatchNorm right after it.
        consumers: (module name, [C] long positions of the group's channels along the consumer's input dim).
        order: position of the producer in ``model.named_modules()`` (layers are processed in this order).
    """

    group: str
    producer: str
    bn: str
    consumers: List[Tuple[str, torch.Tensor]]
    order: int


def _is_plain_layer(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.modules.conv._ConvNd) and module.groups == 1 and not module.transposed


def find_layers(model: nn.Module, groups: List[ChannelGroup], probe: Probe) -> Tuple[Dict[str, CompensableLayer],
                                                                                   Dict[str, str]]:
    """Split the groups into compensable layers and refusals.

    Returns:
        (group id -> `CompensableLayer`, group id -> reason it cannot be compensated).
    """
    modules = dict(model.named_modules())
    order = {name: i for i, name in enumerate(modules)}
    layers: Dict[str, CompensableLayer] = {}
    refused: Dict[str, str] = {}
    for g in groups:
        if not g.prunable:
            continue
        producers = sorted({m.module for m in g.members if m.role == "out" and m.param == "weight"
                            and _is_plain_layer(modules[m.module])})
        bns = sorted({m.module for m in g.members if m.role == "norm" and m.param == "weight"
                      and isinstance(modules[m.module], nn.modules.batchnorm._BatchNorm)})
        reason = None
        if len(producers) != 1 or len(bns) != 1:
            reason = (f"{len(producers)} producer layers and {len(bns)} BatchNorms (channels coupled across a "
                      f"residual add: consumers read a sum that no single BatchNorm describes)")
        elif probe.follower.get(producers[0]) != bns[0]:
            reason = f"BatchNorm '{bns[0]}' does not directly follow '{producers[0]}'"
        consumers: List[Tuple[str, torch.Tensor]] = []
        if reason is None:
            for m in g.members:
                if m.role != "in":
                    continue
                if m.param != "weight" or m.dim != 1 or not _is_plain_layer(modules[m.module]):
                    reason = f"consumer '{m.module}' ({m.param}, dim {m.dim}) is not a plain conv / linear input"
                    break
                if m.index_map.shape[1] != 1:
                    reason = f"consumer '{m.module}' reads {m.index_map.shape[1]} positions per channel"
                    break
                d = probe.inputs.get(m.module)
                if d is None or d.source != bns[0]:
                    reason = f"consumer '{m.module}' does not read the output of '{bns[0]}' (e.g. a residual sum)"
                    break
                if d.activation != "relu":
                    act = d.activation or "no activation"
                    reason = (f"consumer '{m.module}' reads {act} of '{bns[0]}': only ReLU has the "
                              f"rectified-Gaussian moments used here (SiLU / GELU are refused, not approximated)")
                    break
                extra = [op for op in d.ops if op != "relu" and not op.startswith(_ALLOWED_AFTER)]
                if extra:
                    reason = f"consumer '{m.module}' reads '{bns[0]}' through {extra}"
                    break
                consumers.append((m.module, m.index_map[:, 0].clone()))
        if reason is None and not consumers:
            reason = "no consumer"
        if reason is not None:
            refused[g.id] = reason
            continue
        layers[g.id] = CompensableLayer(g.id, producers[0], bns[0], consumers, order[producers[0]])
    return layers, refused
