"""FTWT's per-layer mask predictor (paper 9): pooled input channels -> one logit per output filter."""
from __future__ import annotations

import torch
from torch import nn


class MaskPredictor(nn.Module):
    """Global average pool of the layer's input, an optional softmax over channels, a 1x1 conv to filter logits.

    A filter runs when its logit is positive (sigmoid > 0.5).

    Args:
        in_channels: channels of the masked layer's input.
        out_channels: filters of the masked layer (one logit each).
        softmax: softmax over the pooled channels (the official code's default; discards the input's scale).

    Shapes: ``[B, in_channels, H, W]`` -> ``[B, out_channels]``.
    """

    def __init__(self, in_channels: int, out_channels: int, softmax: bool = True):
        super().__init__()
        self.softmax = softmax
        self.fc = nn.Linear(in_channels, out_channels)
        nn.init.normal_(self.fc.weight, 0.0, 0.01)
        nn.init.constant_(self.fc.bias, 1.0)  # start with every filter on: an untrained predictor masks nothing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.flatten(2).mean(dim=2) if x.dim() > 2 else x
        if self.softmax:
            pooled = pooled.softmax(dim=1)
        return self.fc(pooled)

    def macs(self) -> int:
        """Multiply-accumulates of one prediction (the 1x1 conv; pooling is not counted, as for the backbone)."""
        return self.fc.in_features * self.fc.out_features
