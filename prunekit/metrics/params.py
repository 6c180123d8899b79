"""Parameter counts."""
from __future__ import annotations

from typing import Dict

import torch


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters; shared (tied) tensors are counted once.

    Args:
        model: any module.
        trainable_only: count only parameters with ``requires_grad``.
    """
    seen, total = set(), 0
    for param in model.parameters():
        if id(param) in seen or (trainable_only and not param.requires_grad):
            continue
        seen.add(id(param))
        total += param.numel()
    return total


def parameters_by_module(model: torch.nn.Module) -> Dict[str, int]:
    """Parameters owned directly by each module (not its children), keyed by qualified name; zero entries omitted."""
    counts = {}
    for name, module in model.named_modules():
        n = sum(p.numel() for p in module.parameters(recurse=False))
        if n:
            counts[name] = n
    return counts
