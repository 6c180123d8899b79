"""Fold each BatchNorm into the convolution (or linear layer) that feeds it, as deployment runtimes do.

In eval mode ``bn(conv(x)) = conv'(x)`` with ``W' = W * s`` and ``b' = (b - mean) * s + beta``, where
``s = gamma / sqrt(var + eps)`` per output channel. Folding is only exact when the BatchNorm reads the layer's output
and nothing else reads it, so the pairs are found by running the model once: module hooks record which tensor each
layer produced and each BatchNorm read, and a torch-function mode counts the operations that consume each produced
tensor. A pair that is not provably exclusive is left unfolded.
"""
from __future__ import annotations

import copy
from collections import Counter
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class _CountUses(TorchFunctionMode):
    """Counts, per watched tensor, the calls that take it and return a tensor (metadata queries like ``dim()`` do
    not count: they return ints)."""

    def __init__(self, watched: Dict[int, torch.Tensor]):
        super().__init__()
        self.watched, self.uses = watched, Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if isinstance(result, torch.Tensor) or (isinstance(result, (tuple, list)) and
                                                 any(isinstance(r, torch.Tensor) for r in result)):
            from torch.utils._pytree import tree_flatten

            for t in tree_flatten((args, kwargs or {}))[0]:
                if isinstance(t, torch.Tensor) and self.watched.get(id(t)) is t:
                    self.uses[id(t)] += 1
        return result


def find_foldable_pairs(model: nn.Module, inputs: Any, forward_fn: Optional[Callable] = None) -> Dict[str, str]:
    """{batchnorm module name: conv / linear module name} of the pairs that can be folded exactly."""
    from ..graph.trace import call_model, output_tensors

    names = {m: n for n, m in model.named_modules()}
    produced: Dict[int, torch.Tensor] = {}
    producer: Dict[int, str] = {}
    calls: Counter = Counter()
    reads: Dict[str, torch.Tensor] = {}
    handles = []

    def after_layer(module, args, output):
        calls[names[module]] += 1
        if isinstance(output, torch.Tensor):
            produced[id(output)], producer[id(output)] = output, names[module]

    def before_bn(module, args):
        calls[names[module]] += 1
        if args and isinstance(args[0], torch.Tensor):
            reads[names[module]] = args[0]

    for module in model.modules():
        if isinstance(module, _FOLDABLE):
            handles.append(module.register_forward_hook(after_layer))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            handles.append(module.register_forward_pre_hook(before_bn))
    mode = _CountUses(produced)
    try:
        with torch.no_grad(), mode:
            out = call_model(model, inputs, forward_fn)
    finally:
        for h in handles:
            h.remove()
    outputs = {id(t) for t in output_tensors(out)}
    pairs = {}
    for bn_name, x in reads.items():
        layer = producer.get(id(x))
        if layer is None or produced[id(x)] is not x or id(x) in outputs:
            continue
        bn, lin = model.get_submodule(bn_name), model.get_submodule(layer)
        if calls[bn_name] != 1 or calls[layer] != 1 or mode.uses[id(x)] != 1 or not bn.track_running_stats:
            continue
        if isinstance(lin, nn.Linear) and x.dim() != 2:  # BatchNorm1d on [B, N, C] normalises N, not the features
            continue
        pairs[bn_name] = layer
    return pairs


def _fold_into(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.affine:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale + (bn.bias if bn.affine else 0.0)
        layer.weight.mul_(scale.reshape(-1, *([1] * (layer.weight.dim() - 1))))
        if layer.bias is None:
            layer.bias = nn.Parameter(shift.clone())
        else:
            layer.bias.copy_(layer.bias * scale + shift)


def fold_batchnorm(model: nn.Module, inputs: Any, forward_fn: Optional[Callable] = None) -> nn.Module:
    """A copy of `model` (eval mode) with every exclusively-fed BatchNorm folded into its layer and replaced by
    ``nn.Identity``. Outputs equal the original's in eval mode up to float rounding.

    Args:
        model: any module; it is not modified.
        inputs: example inputs (tensor ``[B, C, H, W]``, tuple or dict) used to find the pairs.
    """
    folded = copy.deepcopy(model).eval()
    for bn_name, layer_name in find_foldable_pairs(folded, inputs, forward_fn).items():
        _fold_into(folded.get_submodule(layer_name), folded.get_submodule(bn_name))
        parent, _, child = bn_name.rpartition(".")
        setattr(folded.get_submodule(parent) if parent else folded, child, nn.Identity())
    return folded


def fold_bn(model: nn.Module, inputs: Any = None) -> Optional[nn.Module]:
    """The latency benchmark's entry: `model` itself when it has no BatchNorm, else `fold_batchnorm` (with `inputs`)
    or, without inputs, ``torch.fx``'s fuse (None when the model cannot be traced symbolically)."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model
    if inputs is not None:
        return fold_batchnorm(model, inputs)
    try:
        from torch.fx.experimental.optimization import fuse

        return fuse(model)
    except Exception:  # noqa: BLE001 - not symbolically traceable
        return None
