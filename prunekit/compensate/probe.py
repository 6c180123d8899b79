"""What each conv / linear layer reads, in terms of BatchNorm statistics: one forward pass on example inputs.

UDFC-style compensation needs, for every layer that consumes a channel, the distribution of that channel as the
BatchNorm parameters describe it: the consumer reads ``act(BN(conv(x)))`` (possibly pooled). A `TorchFunctionMode`
follows the tensors of one forward pass (example inputs are random: no data is read) and gives each tensor a
`Description` when it derives from a BatchNorm output by per-channel operations:

* a BN output: pre-activation z ~ N(beta, s^2) per channel, s = |gamma| sqrt(var / (var + eps))
  (`sources.bn_output_std`; ``source`` = the BN module);
* ``relu``: rectified-Gaussian mean and variance; ``silu`` / ``gelu``: kept by name (no closed-form moments here,
  consumers of them are refused by the compensation, not silently approximated);
* pools, dropout, flatten, clone: the description passes (pooling is an approximation, recorded in ``ops``);
* ``add`` of two described tensors (residual streams): a moment-matched Gaussian (means and variances summed,
  branches assumed independent), with no single source, so consumers of residual streams are not compensated
  but still get input means for the bias correction.

It also records which BatchNorm directly follows which conv / linear (the pairs that BN folding fuses).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..graph.trace import call_model
from .moments import relu_mean, relu_second_moment
from .sources import bn_output_std

_ACTIVATIONS = {"relu": "relu", "relu_": "relu", "silu": "silu", "silu_": "silu", "gelu": "gelu"}
_PASS = {"max_pool2d", "max_pool1d", "avg_pool2d", "avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool1d",
         "adaptive_max_pool2d", "dropout", "dropout2d", "flatten", "contiguous", "clone", "_max_pool2d",
         "max_pool2d_with_indices", "boolean_dispatch"}
_ADD = {"add", "__add__", "__iadd__", "add_", "__radd__"}


@dataclass
class Description:
    """Per-channel statistics of a tensor derived from a BatchNorm output (channel dim 1).

    Attributes:
        source: the BN module the tensor derives from, or None for a moment-matched sum (residual stream).
        ops: the per-channel operations applied since the BN (``("relu", "max_pool2d")``).
        pre_mean / pre_std: [C] the Gaussian pre-activation (beta and `sources.bn_output_std` for a BN output).
        mean / var: [C] this tensor's mean and variance under the Gaussian model (float64).
    """

    source: Optional[str]
    ops: Tuple[str, ...]
    pre_mean: torch.Tensor
    pre_std: torch.Tensor
    mean: torch.Tensor
    var: torch.Tensor

    @property
    def activation(self) -> Optional[str]:
        acts = [op for op in self.ops if op in ("relu", "silu", "gelu")]
        return acts[0] if acts else None


@dataclass
class Probe:
    """Result of `probe_model`.

    Attributes:
        inputs: consumer module -> `Description` of its input (None: not derived from a BN, e.g. the image).
        follower: conv / linear module -> the BatchNorm module that directly normalises its output.
    """

    inputs: Dict[str, Optional[Description]]
    follower: Dict[str, str]


class _Mode(TorchFunctionMode):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.owner = {}
        for name, m in model.named_modules():
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm)):
                self.owner[id(m.weight)] = (name, m)
        self.desc: Dict[int, Tuple[torch.Tensor, Description]] = {}
        self.made_by: Dict[int, Tuple[torch.Tensor, str]] = {}
        self.inputs: Dict[str, Optional[Description]] = {}
        self.follower: Dict[str, str] = {}

    def get(self, x) -> Optional[Description]:
        entry = self.desc.get(id(x)) if isinstance(x, torch.Tensor) else None
        return entry[1] if entry is not None and entry[0] is x else None

    def put(self, x, d: Description) -> None:
        if isinstance(x, torch.Tensor):
            self.desc[id(x)] = (x, d)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        raw = getattr(func, "__name__", "")
        name = raw if raw in _ADD else raw.lstrip("_")
        first = args[0] if args else None
        if func in (F.conv1d, F.conv2d, F.conv3d, F.linear):
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            owner = self.owner.get(id(weight))
            if owner is not None:
                self.inputs[owner[0]] = self.get(first)
                self.made_by[id(out)] = (out, owner[0])
        elif func is F.batch_norm:
            weight = args[3] if len(args) > 3 else kwargs.get("weight")
            owner = self.owner.get(id(weight))
            if owner is not None:
                bn = owner[1]
                made = self.made_by.get(id(first))
                if made is not None and made[0] is first:
                    self.follower[made[1]] = owner[0]
                beta, gamma = bn.bias.detach().double(), bn_output_std(bn)
                self.put(out, Description(owner[0], (), beta, gamma, beta.clone(), gamma ** 2))
        elif name in _ACTIVATIONS:
            d = self.get(first)
            if d is not None:
                act = _ACTIVATIONS[name]
                if act == "relu":
                    m1 = relu_mean(d.pre_mean, d.pre_std)
                    var = (relu_second_moment(d.pre_mean, d.pre_std) - m1 ** 2).clamp_min(0.0)
                else:
                    m1, var = d.mean, d.var  # no moments: the name alone marks it
                self.put(out, Description(d.source, d.ops + (act,), d.pre_mean, d.pre_std, m1, var))
        elif name in _PASS or (name == "flatten" or "pool" in name or "dropout" in name):
            d = self.get(first)
            if d is not None and isinstance(out, torch.Tensor) and out.dim() >= 2 and out.shape[1] == d.mean.numel():
                self.put(out, Description(d.source, d.ops + (name,), d.pre_mean, d.pre_std, d.mean, d.var))
        elif name in _ADD and len(args) >= 2:
            a, b = self.get(args[0]), self.get(args[1])
            if a is not None and b is not None and a.mean.shape == b.mean.shape:
                mean, var = a.mean + b.mean, a.var + b.var
                self.put(out, Description(None, ("add",), mean, var.sqrt(), mean, var))
        return out


def probe_model(model: nn.Module, inputs: Any, forward_fn: Optional[Callable] = None) -> Probe:
    """Run `model` once (eval mode, no grad) on example `inputs` and describe every conv / linear input.

    Args:
        model: the network; left unchanged (its training flag is restored).
        inputs: example inputs (random ones suffice: only the flow of operations matters).

    Returns:
        a `Probe`.
    """
    mode = _Mode(model)
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), mode:
            call_model(model, inputs, forward_fn)
    finally:
        model.train(was)
    return Probe(inputs=dict(mode.inputs), follower=dict(mode.follower))
