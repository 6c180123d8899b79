"""The real execution path of a `DynamicChannelModel` at batch 1: only the selected filters run.

`build_gathered(dyn)` copies the backbone and replaces every site conv and every conv reading a site's channels by a
`GatheredConv`:

- a site conv runs its predictor on its input, keeps the filters with a positive logit, gathers their weights (its
  BatchNorm folded in beforehand, as eval-mode BatchNorm is affine), runs a convolution that narrow, and scatters the
  result into a zero tensor of full width (the masked filters' outputs are exactly zero in the masked model too);
- a conv reading a site's channels gathers only the kept input channels of its input and weight.

The result equals the masked dense model (`DynamicChannelModel` in eval mode) up to float rounding; `build_gathered`
checks this on an example input and refuses a model where it does not hold (an operation between two layers that
does not map zero to zero would break the input-side skip).
"""
from __future__ import annotations

import copy
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..export.bn_fold import fold_batchnorm  # noqa: F401  (the gathered path's fair dense baseline: BN folded alike)
from .model import DynamicChannelModel, predictor_key
from .predictor import MaskPredictor


class GatheredConv(nn.Module):
    """A Conv2d that computes only kept filters and/or reads only kept input channels (batch 1).

    Args:
        conv: the original convolution (ungrouped).
        kept: the dict shared by one gathered model: site conv name -> kept filter indices of the current input.
        site: this conv's site name (its filters are masked), or None.
        predictor: the site's predictor (with `site`).
        norm: the site's eval-mode BatchNorm, folded into the weights (with `site`), or None.
        reads: ``[(site name, input positions [channels])]`` of the sites whose channels this conv reads.
        narrow_out: hand the kept filters on as a narrow tensor ``[1, k, H', W']`` (every reader of this site is a
            `GatheredConv` reading only it) instead of scattering them into a zero tensor of full width.
        narrow_in: the input arrives narrow from the single site in `reads`.

    Shapes: ``[1, C_in or k_in, H, W]`` -> ``[1, C_out or k_out, H', W']``.
    """

    def __init__(self, conv: nn.Conv2d, kept: Dict[str, torch.Tensor], site: Optional[str] = None,
                 predictor: Optional[MaskPredictor] = None, norm: Optional[nn.Module] = None,
                 reads: Tuple[Tuple[str, torch.Tensor], ...] = (), narrow_out: bool = False,
                 narrow_in: bool = False):
        super().__init__()
        weight = conv.weight.detach().clone()
        bias = conv.bias.detach().clone() if conv.bias is not None else None
        if norm is not None:
            scale = norm.weight.detach() / torch.sqrt(norm.running_var + norm.eps)
            shift = norm.bias.detach() - norm.running_mean * scale
            weight = weight * scale.view(-1, 1, 1, 1)
            bias = shift if bias is None else bias * scale + shift
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.kept, self.site, self.predictor = kept, site, predictor
        self.reads: List[Tuple[str, torch.Tensor]] = [(name, pos.long()) for name, pos in reads]
        if narrow_in and len(self.reads) != 1:
            raise ConfigError("dynamic: a narrow input must come from exactly one site")
        self.narrow_in, self.narrow_out = narrow_in, narrow_out
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        unread = torch.ones(conv.in_channels, dtype=torch.bool)
        for _, pos in self.reads:
            unread[pos] = False
        self.register_buffer("unread", torch.nonzero(unread).flatten())  # input channels no site owns
        # a narrow input from a site that owns all inputs in order: the kept indices are the input positions
        self.identity_in = bool(narrow_in and torch.equal(self.reads[0][1], torch.arange(conv.in_channels)))
        if predictor is not None:
            self.register_buffer("pred_weight_t", predictor.fc.weight.detach().t().contiguous())
            self.register_buffer("pred_bias", predictor.fc.bias.detach().view(1, -1).clone())

    def _input_index(self) -> torch.Tensor:
        """Positions of the input channels read now (those no site owns, then each site's kept ones)."""
        parts = [self.unread] + [pos.index_select(0, self.kept[name]) for name, pos in self.reads]
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def _predict(self, x: torch.Tensor, index: Optional[torch.Tensor]) -> torch.Tensor:
        """Kept filter indices for input `x` (full width, or narrow: the channels at `index`).

        The predictor's average pool and linear layer run as one spatial sum and one ``addmm`` (its ``alpha`` takes
        the 1 / (H * W) of the mean): at batch 1 every extra op and module call is a sizeable share of a small
        convolution. A narrow input meets the rows of the predictor's weight it reads (the masked channels would
        have added zeros); with the softmax, which sees every channel, it is scattered to full width instead.
        """
        pooled = x.sum(dim=(2, 3))
        weight_t = self.pred_weight_t
        if index is not None:
            if self.predictor.softmax:
                pooled = pooled.new_zeros((1, self.in_channels)).index_copy_(1, index, pooled)
            else:
                weight_t = weight_t.index_select(0, index)
        if self.predictor.softmax:
            logits = torch.addmm(self.pred_bias, (pooled / (x.shape[2] * x.shape[3])).softmax(dim=1), weight_t)
        else:
            logits = torch.addmm(self.pred_bias, pooled, weight_t, alpha=1.0 / (x.shape[2] * x.shape[3]))
        return torch.nonzero(logits[0] > 0).flatten()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != 1:
            raise ConfigError(f"dynamic: the gathered path runs one input at a time, got a batch of {x.shape[0]}")
        weight, inp = self.weight, x
        index = None  # the weight's input channels that meet `inp`, in its order (None: all, in order)
        if self.narrow_in:  # x holds only the source site's kept channels, in order
            name, pos = self.reads[0]
            index = self.kept[name] if self.identity_in else pos.index_select(0, self.kept[name])
            if self.identity_in and index.numel() == self.in_channels:
                index = None  # every channel kept, in order: nothing to gather
        elif self.reads:
            index = self._input_index()
            inp = x.index_select(1, index)
        if self.site is None:
            if index is not None:
                weight = weight.index_select(1, index)
            return _conv(inp, weight, self.bias, self)
        keep = self._predict(x, index if self.narrow_in else None)  # a full-width x has zeros where masked
        self.kept[self.site] = keep
        everything = keep.numel() == self.out_channels
        bias = self.bias
        if not everything:  # gather the kept filters first: the input-side gather then moves fewer weights
            weight = weight.index_select(0, keep)
            bias = bias.index_select(0, keep) if bias is not None else None
        if index is not None:
            weight = weight.index_select(1, index)
        y = _conv(inp, weight, bias, self)
        if self.narrow_out or everything:
            return y
        out = x.new_zeros((1, self.out_channels, y.shape[2], y.shape[3]))
        return out.index_copy_(1, keep, y)


def _conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], conv: GatheredConv) -> torch.Tensor:
    """``F.conv2d`` that also takes zero input or output channels (every filter or input masked)."""
    if weight.shape[0] and weight.shape[1]:
        return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation)
    shape = F.conv2d(x.new_zeros((1, 1, *x.shape[2:])), x.new_zeros((1, 1, *weight.shape[2:])), None, conv.stride,
                     conv.padding, conv.dilation).shape
    out = x.new_zeros((1, weight.shape[0], shape[2], shape[3]))
    return out + bias.view(1, -1, 1, 1) if bias is not None else out


class GatheredModel(nn.Module):
    """The backbone with `GatheredConv` layers; call it on one input ``[1, C, H, W]``.

    Attributes:
        kept: site conv name -> kept filter indices of the last input.
    """

    def __init__(self, backbone: nn.Module, kept: Dict[str, torch.Tensor]):
        super().__init__()
        self.backbone, self.kept = backbone, kept

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.kept.clear()
        return self.backbone(x)


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def build_gathered(dyn: DynamicChannelModel, example: Optional[torch.Tensor] = None,
                   tolerance: float = 1e-5, narrow: bool = True) -> GatheredModel:
    """The batch-1 execution path of `dyn` (eval-mode weights copied; `dyn` is not changed).

    Args:
        dyn: a trained dynamic model.
        example: one input ``[1, C, H, W]`` to check the gathered path against the masked dense model (random when
            None).
        tolerance: largest accepted relative difference (max abs error / max abs output).
        narrow: hand kept filters on without scattering where every reader of a site is a convolution reading all
            its input channels from that site alone (falls back to scattering when the check fails).

    Raises:
        ConfigError: the gathered output differs from the masked dense one.
    """
    example = example if example is not None else torch.randn(1, *dyn.input_shape)
    if narrow:
        try:
            return _build(dyn, example, tolerance, narrow=True)
        except (ConfigError, RuntimeError):  # an operation between two layers needs the full width
            pass
    return _build(dyn, example, tolerance, narrow=False)


def _narrow_sites(dyn: DynamicChannelModel, modules: Dict[str, nn.Module]) -> set:
    """Sites whose kept filters can travel narrow: every reader is a conv that reads all its inputs from the site."""
    readers: Dict[str, int] = {}
    for s in dyn.sites:
        for consumer in s.consumers:
            readers[consumer] = readers.get(consumer, 0) + 1
    return {s.conv for s in dyn.sites if s.consumers and not s.other_readers and all(
        readers[c] == 1 and len(pos) == modules[c].in_channels for c, pos in s.consumers.items())}


def _build(dyn: DynamicChannelModel, example: torch.Tensor, tolerance: float, narrow: bool) -> GatheredModel:
    backbone = copy.deepcopy(dyn.backbone).eval()
    modules = dict(backbone.named_modules())
    kept: Dict[str, torch.Tensor] = {}
    reads: Dict[str, List[Tuple[str, torch.Tensor]]] = {}
    for s in dyn.sites:
        for consumer, positions in s.consumers.items():
            reads.setdefault(consumer, []).append((s.conv, torch.tensor(positions, dtype=torch.long)))
    sites = {s.conv: s for s in dyn.sites}
    narrow_sites = _narrow_sites(dyn, modules) if narrow else set()
    for name in sorted(set(sites) | set(reads)):
        site = sites.get(name)
        norm = modules[site.norm] if site is not None and site.norm else None
        predictor = copy.deepcopy(dyn.predictors[predictor_key(name)]).eval() if site is not None else None
        narrow_in = any(src in narrow_sites for src, _ in reads.get(name, ()))
        _replace(backbone, name, GatheredConv(modules[name], kept, name if site else None, predictor, norm,
                                              tuple(reads.get(name, ())), name in narrow_sites, narrow_in))
        if norm is not None:
            _replace(backbone, site.norm, nn.Identity())
    gathered = GatheredModel(backbone, kept).eval()
    gathered.narrow_sites = sorted(narrow_sites)
    check_equal(dyn, gathered, example, tolerance)
    return gathered


@torch.no_grad()
def check_equal(dyn: DynamicChannelModel, gathered: GatheredModel, x: torch.Tensor, tolerance: float = 1e-5) -> float:
    """Relative difference between the gathered path and the masked dense model on `x` ``[1, C, H, W]``.

    Raises:
        ConfigError: above `tolerance`.
    """
    was_training, source = dyn.training, dyn.mask_source
    dyn.eval()
    dyn.mask_source = "predicted"
    try:
        want = dyn(x)
    finally:
        dyn.train(was_training)
        dyn.mask_source = source
    got = gathered(x)
    error = float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))
    if error > tolerance:
        raise ConfigError(f"dynamic: the gathered path differs from the masked dense model by {error:.3g} (relative, "
                          f"> {tolerance}); an operation between two masked layers may not map zero to zero")
    return error

