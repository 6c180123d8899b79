"""MACPruning (paper 6): per-inference input-pixel activation maps that skip the first layer's multiply-accumulates.

A pixel activation map (PAM) says which input pixel positions the first layer computes on this inference:

- random (RPAM, ``top_q = 0``): each pixel is on with probability `keep_prob`, freshly drawn per inference;
- importance-aware (IaPAM): the `top_q` fraction of pixel positions ranked by an importance map
  (`prunekit.dynamic.pixel_importance`) is always on, every other pixel is on with probability `keep_prob`.

`MACPrunedModel` wraps a classifier: each forward draws one map per input and runs the first layer on the active
pixels only. A skipped multiply-accumulate contributes nothing, which is what a zero input contributes, so the
wrapper computes ``first_layer(x * mask)``; `skipped_conv2d` computes the same output by executing only the MACs of
active pixels (the tests check the two agree exactly), and `executed_macs` counts them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


@dataclass
class PixelMaskConfig:
    """A pixel activation map's settings.

    Attributes:
        keep_prob: probability p that a non-important pixel is computed, in (0, 1].
        top_q: fraction of pixel positions always computed (the most important ones), in [0, 1); 0 gives the
            random map.
    """

    keep_prob: float = 0.5
    top_q: float = 0.0

    def __post_init__(self):
        if not 0.0 < self.keep_prob <= 1.0:
            raise ConfigError(f"pixel mask: keep_prob must lie in (0, 1], got {self.keep_prob}")
        if not 0.0 <= self.top_q < 1.0:
            raise ConfigError(f"pixel mask: top_q must lie in [0, 1), got {self.top_q}")


class PixelActivationMap:
    """Draws per-inference pixel masks.

    Args:
        config: keep probability and always-on fraction.
        shape: ``(H, W)`` of the input.
        importance: ``[H, W]`` importance map (needed when ``top_q > 0``).
    """

    def __init__(self, config: PixelMaskConfig, shape: Tuple[int, int], importance: Optional[torch.Tensor] = None):
        self.config, self.shape = config, (int(shape[0]), int(shape[1]))
        self.important = torch.zeros(self.shape, dtype=torch.bool)
        if config.top_q > 0:
            if importance is None or tuple(importance.shape) != self.shape:
                raise ConfigError(f"pixel mask: top_q > 0 needs an importance map of shape {self.shape}, got "
                                  f"{None if importance is None else tuple(importance.shape)}")
            k = int(round(config.top_q * importance.numel()))
            self.important.view(-1)[importance.flatten().topk(k).indices] = True

    def draw(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """`n` fresh maps: ``[n, H, W]`` bool (True = computed)."""
        random_on = torch.rand((n, *self.shape), generator=generator) < self.config.keep_prob
        return random_on | self.important

    def active_fraction(self) -> float:
        """Expected fraction of pixels computed."""
        q = float(self.important.float().mean())
        return q + (1 - q) * self.config.keep_prob

    def to_dict(self) -> Dict[str, Any]:
        return {"keep_prob": self.config.keep_prob, "top_q": self.config.top_q, "shape": list(self.shape),
                "important": [int(i) for i in torch.nonzero(self.important.flatten()).flatten().tolist()]}


def first_layer(model: nn.Module, example: torch.Tensor) -> str:
    """Name of the first Conv2d / Linear the model runs on `example` (the layer whose MACs MACPruning skips)."""
    order = []
    handles = [m.register_forward_hook(lambda mod, a, o, name=n: order.append(name))
               for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    if not order:
        raise ConfigError("pixel mask: the model runs no Conv2d / Linear layer")
    return order[0]


class MACPrunedModel(nn.Module):
    """A classifier whose first layer computes only the active pixels of a per-inference activation map
    (MACPruning, Ding et al., arXiv 2502.15020).

    Args:
        model: the classifier (its first layer must read the input image directly).
        pam: the activation map drawn per input.
        seed: seed of the map generator (None: torch's global RNG).

    Attributes:
        last_mask: ``[B, H, W]`` maps of the last forward.

    Shapes: ``[B, C, H, W]`` -> the model's output.
    """

    def __init__(self, model: nn.Module, pam: PixelActivationMap, seed: Optional[int] = None):
        super().__init__()
        self.model, self.pam = model, pam
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.last_mask: Optional[torch.Tensor] = None

    def forward(self, x: torch.Tensor) -> Any:
        if tuple(x.shape[-2:]) != self.pam.shape:
            raise ConfigError(f"pixel mask: the map is {self.pam.shape}, the input {tuple(x.shape[-2:])}")
        mask = self.pam.draw(x.shape[0], self.generator).to(x.device)
        self.last_mask = mask
        return self.model(x * mask[:, None].to(x.dtype))


def skipped_conv2d(conv: nn.Conv2d, x: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """A conv layer executed MAC by MAC over active pixels only (the reference for `MACPrunedModel`).

    Every product ``w[o, c, i, j] * x[c, y, x]`` whose input pixel is active is computed and accumulated into its
    output; products of inactive pixels (and of zero padding) are never formed.

    Args:
        conv: an ungrouped Conv2d.
        x: ``[B, C, H, W]`` input.
        mask: ``[B, H, W]`` bool activation maps.

    Returns:
        (output ``[B, C_out, H', W']`` identical in value to ``conv(x * mask)``, number of MACs executed).
    """
    if conv.groups != 1:
        raise ConfigError("pixel mask: skipped_conv2d handles ungrouped convolutions only")
    b, c, h, w = x.shape
    kh, kw = conv.kernel_size
    pixel_id = torch.arange(h * w, dtype=x.dtype).view(1, 1, h, w).expand(b, 1, h, w)
    # unfold the pixel ids (padding marked -1) and the values the same way, so every column lists its MACs
    ids = F.unfold(pixel_id + 1, (kh, kw), conv.dilation, conv.padding, conv.stride).long() - 1  # [B, kh*kw, L]
    cols = F.unfold(x, (kh, kw), conv.dilation, conv.padding, conv.stride)  # [B, C*kh*kw, L]
    length = cols.shape[-1]
    active = torch.gather(mask.reshape(b, -1), 1, ids.clamp_min(0).reshape(b, -1)).reshape(ids.shape) & (ids >= 0)
    active = active.repeat(1, c, 1)  # [B, C*kh*kw, L]: the same pixel for every input channel
    bi, ti, li = torch.nonzero(active, as_tuple=True)  # the MACs that run (per output channel)
    weight = conv.weight.reshape(conv.out_channels, -1)  # [C_out, C*kh*kw]
    products = weight[:, ti] * cols[bi, ti, li]  # [C_out, MACs]
    out = torch.zeros(conv.out_channels, b * length, dtype=x.dtype)
    out.index_add_(1, bi * length + li, products)
    out = out.view(conv.out_channels, b, length).permute(1, 0, 2)
    if conv.bias is not None:
        out = out + conv.bias.view(1, -1, 1)
    h_out = (h + 2 * conv.padding[0] - conv.dilation[0] * (kh - 1) - 1) // conv.stride[0] + 1
    w_out = (w + 2 * conv.padding[1] - conv.dilation[1] * (kw - 1) - 1) // conv.stride[1] + 1
    return out.reshape(b, conv.out_channels, h_out, w_out), int(ti.numel()) * conv.out_channels


def executed_macs(conv: nn.Conv2d, mask: torch.Tensor) -> torch.Tensor:
    """MACs of `conv` that run for each activation map ``[B, H, W]`` (padding MACs are not counted).

    Returns:
        ``[B]`` long.
    """
    b, h, w = mask.shape
    kh, kw = conv.kernel_size
    ones = torch.ones(1, 1, kh, kw)
    per_pixel = F.conv_transpose2d(torch.ones(1, 1, *_out_hw(conv, h, w)), ones, stride=conv.stride,
                                   padding=conv.padding, dilation=conv.dilation, output_padding=_pad_fix(conv, h, w))
    uses = per_pixel[0, 0]  # how many output positions read each pixel
    return (mask.float() * uses).flatten(1).sum(1).round().long() * conv.in_channels * conv.out_channels


def _out_hw(conv: nn.Conv2d, h: int, w: int) -> Tuple[int, int]:
    kh, kw = conv.kernel_size
    return ((h + 2 * conv.padding[0] - conv.dilation[0] * (kh - 1) - 1) // conv.stride[0] + 1,
            (w + 2 * conv.padding[1] - conv.dilation[1] * (kw - 1) - 1) // conv.stride[1] + 1)


def _pad_fix(conv: nn.Conv2d, h: int, w: int) -> Tuple[int, int]:
    """output_padding that makes conv_transpose2d give back exactly [h, w]."""
    kh, kw = conv.kernel_size
    ho, wo = _out_hw(conv, h, w)
    full_h = (ho - 1) * conv.stride[0] - 2 * conv.padding[0] + conv.dilation[0] * (kh - 1) + 1
    full_w = (wo - 1) * conv.stride[1] - 2 * conv.padding[1] + conv.dilation[1] * (kw - 1) + 1
    return h - full_h, w - full_w


def finetune_with_pixel_masks(model: nn.Module, pam: PixelActivationMap, dataset, train_config) -> Any:
    """Fine-tune `model` in place with the activation maps as augmentation (inputs of inactive pixels zeroed,
    freshly drawn per step and input), through the reference training loop.

    Args:
        train_config: a `prunekit.train.loop.TrainConfig`.

    Returns:
        the loop's `TrainResult`.
    """
    from ..train.loop import train

    return train(MACPrunedModel(model, pam, seed=train_config.seed), dataset, train_config)
