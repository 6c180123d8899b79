"""ShuffleNetV2-style network for CIFAR (Ma et al. 2018, "ShuffleNet V2: Practical Guidelines for Efficient CNN
Architecture Design").

Stride-1 units split the channels in two halves (`Tensor.chunk`), transform one half, concatenate and shuffle;
stride-2 units run two branches on the whole input, concatenate and shuffle. The shuffle is a real
view -> transpose -> reshape (`channel_shuffle`). Adapted for 32x32: 3x3 stride-1 stem and no max-pool.
No pretrained weights exist locally. Input [B, 3, 32, 32] (CIFAR mean/std normalised) -> logits [B, num_classes].
"""
from __future__ import annotations

import warnings
from typing import Dict, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

#: Output channels of the three stages and of the final 1x1 conv, by width multiplier (from the paper's table 5).
WIDTHS: Dict[float, Tuple[int, int, int, int]] = {
    0.5: (48, 96, 192, 1024), 1.0: (116, 232, 464, 1024), 1.5: (176, 352, 704, 1024), 2.0: (244, 488, 976, 2048),
}
REPEATS: Tuple[int, int, int] = (4, 8, 4)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave channel groups: channel ``g * (C / groups) + i`` moves to position ``i * groups + g``.

    Args:
        x: [B, C, H, W] with C divisible by `groups`.
        groups: number of channel groups.

    Returns:
        [B, C, H, W], the same channels permuted.
    """
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1,
             relu: bool = True) -> nn.Sequential:
    layers: List[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(out_ch)
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _main_branch(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    """1x1 conv-BN-ReLU -> 3x3 depthwise conv-BN -> 1x1 conv-BN-ReLU."""
    return nn.Sequential(
        _conv_bn(in_ch, out_ch, 1),
        _conv_bn(out_ch, out_ch, 3, stride, groups=out_ch, relu=False),
        _conv_bn(out_ch, out_ch, 1),
    )


class ShuffleUnit(nn.Module):
    """Stride 1: split -> (identity | branch) -> cat -> shuffle. Stride 2: (branch1 | branch2) on x -> cat -> shuffle.

    Args:
        in_ch: input channels (even for stride 1).
        out_ch: output channels (even); each branch produces half.
        stride: 1 or 2.

    Shapes: [B, in_ch, H, W] -> [B, out_ch, H / stride, W / stride].
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"cifar_shufflenetv2: stride must be 1 or 2, got {stride}")
        if stride == 1 and in_ch != out_ch:
            raise ValueError(f"cifar_shufflenetv2: a stride-1 unit keeps its width ({in_ch} != {out_ch})")
        self.stride = stride
        half = out_ch // 2
        if stride == 2:
            self.branch1 = nn.Sequential(
                _conv_bn(in_ch, in_ch, 3, 2, groups=in_ch, relu=False), _conv_bn(in_ch, half, 1)
            )
            self.branch2 = _main_branch(in_ch, half, 2)
        else:
            self.branch2 = _main_branch(in_ch // 2, half, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class CifarShuffleNetV2(nn.Module):
    """ShuffleNetV2 for 32x32 images: `stem`, `stage2..4` (first unit stride 2), `head` 1x1 conv, `classifier`.

    Args:
        num_classes: output logits.
        width_mult: one of `WIDTHS` (0.5, 1.0, 1.5, 2.0).

    Shapes (1.0x): [B, 3, 32, 32] -> stem [B, 24, 32, 32] -> stages [B, 464, 4, 4] -> head [B, 1024, 4, 4]
    -> pooled [B, 1024] -> [B, num_classes].
    """

    def __init__(self, num_classes: int = 10, width_mult: float = 1.0):
        super().__init__()
        if width_mult not in WIDTHS:
            raise ValueError(f"cifar_shufflenetv2: width_mult must be one of {sorted(WIDTHS)}, got {width_mult}")
        *stage_channels, last = WIDTHS[width_mult]
        self.stem = _conv_bn(3, 24, 3)
        in_ch = 24
        for index, (out_ch, repeats) in enumerate(zip(stage_channels, REPEATS), start=2):
            units = [ShuffleUnit(in_ch, out_ch, 2)] + [ShuffleUnit(out_ch, out_ch, 1) for _ in range(repeats - 1)]
            setattr(self, f"stage{index}", nn.Sequential(*units))
            in_ch = out_ch
        self.head = _conv_bn(in_ch, last, 1)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stage4(self.stage3(self.stage2(self.stem(x))))
        out = F.adaptive_avg_pool2d(self.head(out), 1).flatten(1)
        return self.classifier(out)


def shufflenetv2(pretrained: bool = True, num_classes: int = 10, width_mult: float = 1.0) -> CifarShuffleNetV2:
    """CIFAR ShuffleNetV2 (1.0x: 1.26M params), random init (no pretrained weights exist)."""
    if pretrained:
        warnings.warn("cifar_shufflenetv2: no pretrained weights exist; returning a randomly initialised model",
                      stacklevel=2)
    return CifarShuffleNetV2(num_classes, width_mult)
