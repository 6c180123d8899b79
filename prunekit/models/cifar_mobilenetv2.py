"""CIFAR MobileNetV2 (Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks").

Adapted for 32x32 inputs: stride-1 stem and stride 1 in the second stage, so the final feature map is 4x4.
No pretrained weights exist locally. Input [B, 3, 32, 32] (CIFAR mean/std normalised) -> logits [B, num_classes].
"""
from __future__ import annotations

import warnings
from typing import List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

#: (expansion t, output channels c, repeats n, first stride s) per stage; ImageNet strides 2 -> 1 in stage 2.
CFG: List[Tuple[int, int, int, int]] = [
    (1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
]


def conv_bn_relu6(in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv (no bias) + BN + ReLU6; padding keeps the spatial size at stride 1."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when t = 1) -> 3x3 depthwise -> 1x1 linear projection; residual when shapes allow.

    Shapes: [B, in_ch, H, W] -> [B, out_ch, H / stride, W / stride].
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_ch * expansion
        layers: List[nn.Module] = []
        if expansion != 1:
            layers.append(conv_bn_relu6(in_ch, hidden))
        layers += [
            conv_bn_relu6(hidden, hidden, kernel=3, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class CifarMobileNetV2(nn.Module):
    """MobileNetV2 for 32x32 images: `stem`, `blocks` (17 inverted residuals), `head` 1x1 conv, `classifier`.

    Shapes: [B, 3, 32, 32] -> blocks [B, 320, 4, 4] -> head [B, 1280, 4, 4] -> pooled [B, 1280] -> [B, num_classes].
    """

    def __init__(self, num_classes: int = 10, last_channels: int = 1280):
        super().__init__()
        self.stem = conv_bn_relu6(3, 32, kernel=3)
        blocks, in_ch = [], 32
        for expansion, out_ch, repeats, stride in CFG:
            for i in range(repeats):
                blocks.append(InvertedResidual(in_ch, out_ch, stride if i == 0 else 1, expansion))
                in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.head = conv_bn_relu6(in_ch, last_channels)
        self.classifier = nn.Linear(last_channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.blocks(self.stem(x)))
        return self.classifier(F.adaptive_avg_pool2d(out, 1).flatten(1))


def mobilenetv2(pretrained: bool = True, num_classes: int = 10) -> CifarMobileNetV2:
    """CIFAR MobileNetV2 (2.2M params), random init (no pretrained weights exist)."""
    if pretrained:
        warnings.warn("cifar_mobilenetv2: no pretrained weights exist; returning a randomly initialised model",
                      stacklevel=2)
    return CifarMobileNetV2(num_classes)
