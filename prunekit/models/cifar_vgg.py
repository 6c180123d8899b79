"""CIFAR VGG-16/19 with BatchNorm (Simonyan & Zisserman 2015, "Very Deep Convolutional Networks"; BN variant).

Layout: `features` (conv3x3-BN-ReLU blocks and 2x2 max-pools, per a cfg list) then `classifier` Linear(512, 10).
No pretrained weights exist locally. Input [B, 3, 32, 32] (CIFAR mean/std normalised) -> logits [B, num_classes].
"""
from __future__ import annotations

import warnings
from typing import Dict, List, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

#: Layer configurations: an int is a conv3x3-BN-ReLU with that many output channels, "M" a 2x2 max-pool.
CFGS: Dict[str, List[Union[int, str]]] = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def make_features(cfg: List[Union[int, str]], in_channels: int = 3) -> nn.Sequential:
    """Conv3x3-BN-ReLU / max-pool stack described by `cfg`."""
    layers: List[nn.Module] = []
    for item in cfg:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_channels, int(item), 3, padding=1, bias=False), nn.BatchNorm2d(int(item)),
                       nn.ReLU(inplace=True)]
            in_channels = int(item)
    return nn.Sequential(*layers)


class CifarVGG(nn.Module):
    """VGG with BatchNorm for 32x32 inputs.

    Args:
        cfg: layer configuration (see `CFGS`).
        num_classes: output logits.

    Shapes: [B, 3, H, W] -> features [B, C_last, H / 32, W / 32] -> pooled [B, C_last] -> [B, num_classes].
    """

    def __init__(self, cfg: List[Union[int, str]], num_classes: int = 10):
        super().__init__()
        self.features = make_features(cfg)
        last = [c for c in cfg if c != "M"][-1]
        self.classifier = nn.Linear(int(last), num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.classifier(out)


def _build(name: str, pretrained: bool, num_classes: int) -> CifarVGG:
    if pretrained:
        warnings.warn(f"cifar_vgg: no pretrained weights exist for {name}; returning a randomly initialised model",
                      stacklevel=3)
    return CifarVGG(CFGS[name], num_classes)


def vgg16(pretrained: bool = True, num_classes: int = 10) -> CifarVGG:
    """CIFAR VGG-16 with BatchNorm (14.7M params), random init."""
    return _build("vgg16", pretrained, num_classes)


def vgg19(pretrained: bool = True, num_classes: int = 10) -> CifarVGG:
    """CIFAR VGG-19 with BatchNorm (20.0M params), random init."""
    return _build("vgg19", pretrained, num_classes)
