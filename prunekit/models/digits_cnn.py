"""A small CNN for the 8x8 scikit-learn digits (trained by the demo; no stored weights).

Layout: conv(1->32)-BN-ReLU, conv(32->64)-BN-ReLU, 2x2 max-pool, conv(64->64)-BN-ReLU, global average pool,
Linear(64, 10): about 57k parameters.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class DigitsCNN(nn.Module):
    """Three conv-BN-ReLU blocks and a linear classifier.

    Shapes: [B, 1, 8, 8] -> [B, 32, 8, 8] -> [B, 64, 8, 8] -> pool [B, 64, 4, 4] -> [B, 64, 4, 4] -> [B, 64]
    -> [B, num_classes].
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(64)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.max_pool2d(F.relu(self.bn2(self.conv2(out))), 2)
        out = F.relu(self.bn3(self.conv3(out)))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def digits_cnn(pretrained: bool = True, num_classes: int = 10) -> DigitsCNN:
    """The digits CNN, randomly initialised; `pretrained` is ignored (the demo trains it in seconds)."""
    del pretrained
    return DigitsCNN(num_classes)
