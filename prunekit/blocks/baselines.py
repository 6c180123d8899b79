"""Baselines for block allocation: per-layer unstructured magnitude pruning (finer-grained, no speed-up)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .layout import BlockTarget, parameter


def magnitude_unstructured(model: nn.Module, targets: Sequence[BlockTarget], fraction: float) -> nn.Module:
    """Zero the `fraction` smallest-|w| weights of every target, in place (per layer). Returns `model`."""
    with torch.no_grad():
        for t in targets:
            w = parameter(model, t.param)
            k = int(round(fraction * w.numel()))
            if k <= 0:
                continue
            threshold = torch.kthvalue(w.abs().flatten(), k).values
            w.mul_((w.abs() > threshold).to(w))
    return model
