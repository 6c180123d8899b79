"""A CNN with FTWT per-input channel masks (paper 9): predictors attached at the engine's mask sites.

`DynamicChannelModel` wraps an unchanged backbone. During its forward (hooks that come off when it returns) each site
(`prunekit.dynamic.sites`):

1. predicts filter logits from the site conv's input (detached in ``decoupled`` mode, so the mask loss does not train
   the backbone; ``joint`` lets it flow);
2. labels the filters from the layer's actual output with the heat-map-mass rule (or ``uniform``) while supervised;
3. multiplies the layer's output by the binary mask ``logit > 0`` (computed without gradient: the task loss never
   trains the predictor), which also zeroes the next layer's input channels.

The mask loss ``(1 / L) * sum_l sum_f mean_batch BCE(logit, label)`` of the last forward is in `mask_loss`; the masks,
labels and per-input MACs of the last forward are in `last_masks`, `last_labels` and `macs_per_input()`.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .ground_truth import MODES, channel_strength, labels
from .predictor import MaskPredictor
from .sites import MaskSite

MASK_SOURCES = ("predicted", "labels", "none")


@dataclass
class DynamicConfig:
    """How the masks are labelled and trained.

    Attributes:
        gt_mode: ``mass`` (keep the fewest filters carrying `threshold` of the activation mass) or ``uniform``
            (drop ``1 - threshold`` of the filters of every input).
        threshold: heat-map-mass threshold r in (0, 1]; 1.0 drops only dead filters.
        mode: ``decoupled`` (predictors read detached inputs) or ``joint`` (the mask loss reaches the backbone).
        softmax: softmax over the pooled input channels inside each predictor.
        gt_activation: activation applied to the masked layer's output before measuring filter strength
            (``relu``: the CNNs here follow every BatchNorm with ReLU; ``abs``: the raw output's magnitude). Gate
            sites (``tied``: a residual branch's output, masked before the add) always use ``abs``, FTWT's ground
            truth "before the residual".
        gate_tied: also gate the filters of convs whose channels are tied across residual adds (the stem, each
            block's last conv), as FTWT does; output-side savings only (`prunekit.dynamic.sites`).
    """

    gt_mode: str = "mass"
    threshold: float = 0.9
    mode: str = "decoupled"
    softmax: bool = True
    gt_activation: str = "relu"
    gate_tied: bool = True

    def __post_init__(self):
        if self.gt_mode not in MODES:
            raise ConfigError(f"dynamic: gt_mode must be one of {MODES}, got {self.gt_mode!r}")
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"dynamic: threshold must lie in (0, 1], got {self.threshold}")
        if self.mode not in ("decoupled", "joint"):
            raise ConfigError(f"dynamic: mode must be 'decoupled' or 'joint', got {self.mode!r}")
        if self.gt_activation not in ("relu", "abs"):
            raise ConfigError(f"dynamic: gt_activation must be 'relu' or 'abs', got {self.gt_activation!r}")


def predictor_key(conv: str) -> str:
    """ModuleDict key of the predictor of site conv `conv` (dots are not allowed in keys)."""
    return conv.replace(".", "__")


@dataclass
class _Layer:
    """MACs bookkeeping of one conv / linear layer: ``active_out * active_in * per_pair`` per input."""

    name: str
    out_channels: int
    in_channels: int
    per_pair: int  # MACs per (output channel, input channel) pair: H_out * W_out * k_h * k_w / groups
    site: Optional[str]  # the site this layer produces (mask on its outputs)
    in_sites: List[str]  # the sites whose channels it reads (each covering part or all of its inputs)


class DynamicChannelModel(nn.Module):
    """A backbone plus one `MaskPredictor` per site (FTWT, Elkerdawy et al., CVPR 2022).

    Args:
        backbone: the CNN (kept as is; masks act through forward hooks during this module's forward).
        sites: from `find_sites(backbone, inputs)`.
        config: labelling and training settings.
        dense: ``{group id: reason}`` of the groups left dense (reported, not used).
        input_shape: one input without the batch dim, for the MACs table (``(3, 32, 32)``).

    Attributes:
        supervise: compute labels and the mask loss in the forward (switched off after the cool-down).
        mask_source: which masks the forward applies: ``predicted`` (inference), ``labels`` (the ground truth) or
            ``none`` (the dense model, e.g. while warming the predictors up).

    Shapes: ``[B, *input_shape]`` -> the backbone's output.
    """

    def __init__(self, backbone: nn.Module, sites: List[MaskSite], config: DynamicConfig,
                 dense: Optional[Dict[str, str]] = None, input_shape: tuple = (3, 32, 32)):
        super().__init__()
        if not sites:
            raise ConfigError("dynamic: the model has no mask site (no group with a single producing Conv2d); "
                              f"dense groups: {dense}")
        self.backbone = backbone
        self.sites = list(sites)
        self.config = config
        self.dense = dict(dense or {})
        self.input_shape = tuple(int(v) for v in input_shape)
        modules = dict(backbone.named_modules())
        for s in self.sites:
            for name in (s.conv, s.norm) if s.norm else (s.conv,):
                if name not in modules:
                    raise ConfigError(f"dynamic: site module '{name}' (group {s.group}) is not in the model")
        self.predictors = nn.ModuleDict({
            predictor_key(s.conv): MaskPredictor(modules[s.conv].in_channels, s.channels, config.softmax)
            for s in self.sites})
        self.supervise = True
        self.mask_source = "predicted"
        self.mask_loss = torch.zeros(())
        self.last_masks: Dict[str, torch.Tensor] = {}
        self.last_labels: Dict[str, torch.Tensor] = {}
        self._logits: Dict[str, torch.Tensor] = {}
        self._losses: List[torch.Tensor] = []
        self._layers = self._layer_table()

    # ------------------------------------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> Any:
        if self.mask_source not in MASK_SOURCES:
            raise ConfigError(f"dynamic: mask_source must be one of {MASK_SOURCES}, got {self.mask_source!r}")
        self.last_masks, self.last_labels, self._logits, self._losses = {}, {}, {}, []
        with self._hooks():
            out = self.backbone(x)
        self.mask_loss = torch.stack(self._losses).mean() if self._losses else x.new_zeros(())
        return out

    @contextlib.contextmanager
    def _hooks(self) -> Iterator[None]:
        modules = dict(self.backbone.named_modules())
        handles = []
        try:
            for s in self.sites:
                handles.append(modules[s.conv].register_forward_pre_hook(
                    lambda mod, args, site=s: self._predict(site, args[0])))
                handles.append(modules[s.mask_module].register_forward_hook(
                    lambda mod, args, out, site=s: self._mask(site, out)))
            yield
        finally:
            for h in handles:
                h.remove()

    def _predict(self, site: MaskSite, x: torch.Tensor) -> None:
        inp = x.detach() if self.config.mode == "decoupled" else x
        logits = self.predictors[predictor_key(site.conv)](inp)
        self._logits[site.conv] = logits
        self.last_masks[site.conv] = (logits.detach() > 0).float()

    def _mask(self, site: MaskSite, out: torch.Tensor) -> torch.Tensor:
        logits = self._logits[site.conv]
        if self.supervise or self.mask_source == "labels" or not self.training:
            relu = self.config.gt_activation == "relu" and not site.tied
            act = F.relu(out.detach()) if relu else out.detach()
            gt = labels(channel_strength(act), self.config.gt_mode, self.config.threshold)
            self.last_labels[site.conv] = gt
            if self.supervise and torch.is_grad_enabled():
                bce = F.binary_cross_entropy_with_logits(logits, gt, reduction="none")
                self._losses.append(bce.sum(dim=1).mean())
        if self.mask_source == "none":
            return out
        mask = self.last_masks[site.conv] if self.mask_source == "predicted" else self.last_labels[site.conv]
        return out * mask.view(*mask.shape, *([1] * (out.dim() - 2)))

    # ------------------------------------------------------------------------------------------------ MACs
    def _layer_table(self) -> List[_Layer]:
        """Each conv / linear layer's MACs per channel pair, measured on one example input."""
        producers = {s.conv: s.conv for s in self.sites}
        readers: Dict[str, List[str]] = {}
        for s in self.sites:
            for c in s.consumers:
                readers.setdefault(c, []).append(s.conv)
        shapes: Dict[str, tuple] = {}
        handles = [m.register_forward_hook(lambda mod, a, out, name=n: shapes.__setitem__(name, tuple(out.shape)))
                   for n, m in self.backbone.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        was_training = self.backbone.training
        try:
            self.backbone.eval()
            with torch.no_grad():
                self.backbone(torch.zeros(1, *self.input_shape))
        finally:
            self.backbone.train(was_training)
            for h in handles:
                h.remove()
        table = []
        for name, m in self.backbone.named_modules():
            if name not in shapes:
                continue
            if isinstance(m, nn.Conv2d):
                hw = shapes[name][2] * shapes[name][3]
                per_pair = hw * m.kernel_size[0] * m.kernel_size[1] // m.groups
                table.append(_Layer(name, m.out_channels, m.in_channels, per_pair, producers.get(name),
                                    readers.get(name, [])))
            else:
                tokens = int(torch.tensor(shapes[name][:-1]).prod()) if len(shapes[name]) > 1 else 1
                table.append(_Layer(name, m.out_features, m.in_features, tokens, None, []))
        return table

    def dense_macs(self) -> int:
        """MACs of the backbone's conv / linear layers for one input with nothing masked."""
        return int(sum(layer.out_channels * layer.in_channels * layer.per_pair for layer in self._layers))

    def predictor_macs(self) -> int:
        """MACs of all the predictors for one input."""
        return int(sum(p.macs() for p in self.predictors.values()))

    def macs_per_input(self, masks: Optional[Dict[str, torch.Tensor]] = None) -> torch.Tensor:
        """Backbone MACs actually needed by each input of the last forward (masked filters and the input channels
        they feed skipped; predictors not included).

        Returns:
            ``[B]`` float MACs.
        """
        masks = self.last_masks if masks is None else masks
        if not masks:
            raise ConfigError("dynamic: macs_per_input needs the masks of a forward (run the model first)")
        batch = next(iter(masks.values())).shape[0]
        total = torch.zeros(batch, dtype=torch.float64)
        for layer in self._layers:
            out = masks[layer.site].sum(1).double() if layer.site else torch.full((batch,), float(layer.out_channels),
                                                                                     dtype=torch.float64)
            inp = torch.full((batch,), float(layer.in_channels), dtype=torch.float64)
            for site in layer.in_sites:  # each masked input channel is skipped
                inp -= (1 - masks[site]).sum(1).double()
            total += out * inp * layer.per_pair
        return total
