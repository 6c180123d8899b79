"""Which weights a sparsifier touches, and the row views its masks are computed on.

A *target* is one weight tensor that multiplies its input (a matrix product): ``nn.Linear.weight``,
``nn.ConvNd.weight`` and ``nn.MultiheadAttention``'s input projections. Its *input dimension* is the one the product
sums over (dim 1 for all of these; for a convolution the input channels, with the kernel taps as separate columns),
which is where N:M groups are taken, as sparse tensor cores expect.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from ...errors import ConfigError

#: module type -> weight parameter names that enter a matrix product, with the dim they sum over.
_MATMUL_WEIGHTS: Tuple[Tuple[type, Tuple[str, ...]], ...] = (
    (nn.Linear, ("weight",)),
    (nn.modules.conv._ConvNd, ("weight",)),
    (nn.MultiheadAttention, ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")),
)


@dataclass(frozen=True)
class Target:
    """One sparsified weight: ``module.param`` of shape `shape`, summing over `in_dim`."""

    module: str
    param: str
    shape: Tuple[int, ...]
    in_dim: int = 1

    @property
    def name(self) -> str:
        return f"{self.module}.{self.param}" if self.module else self.param

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def find_targets(model: nn.Module, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> List[Target]:
    """Every matrix-product weight of `model` whose module name matches `include` (all when empty) and not
    `exclude`, in module order.

    Raises:
        ConfigError: when nothing matches (the patterns are named).
    """
    out: List[Target] = []
    for name, module in model.named_modules():
        if include and not _matches(name, include):
            continue
        if exclude and _matches(name, exclude):
            continue
        for cls, params in _MATMUL_WEIGHTS:
            if isinstance(module, cls):
                for p in params:
                    w = getattr(module, p, None)
                    if isinstance(w, torch.Tensor) and w.dim() >= 2:
                        out.append(Target(name, p, tuple(w.shape)))
                break
    if not out:
        raise ConfigError(f"pdp: no Linear / Conv / MultiheadAttention weight matches include={list(include)} "
                          f"exclude={list(exclude)}")
    return out


def nm_compatible(target: Target, m: int) -> bool:
    """Whether the input dimension of `target` splits into groups of `m`."""
    return target.shape[target.in_dim] % m == 0


def to_groups(w: torch.Tensor, in_dim: int, m: int) -> torch.Tensor:
    """View `w` as [G, m]: groups of `m` consecutive entries along `in_dim` (moved last).

    Shapes: Linear [O, I] -> [O * I / m, m]; Conv [O, I, kh, kw] -> [O * kh * kw * I / m, m].
    """
    return w.movedim(in_dim, -1).reshape(-1, m)


def from_groups(rows: torch.Tensor, shape: Tuple[int, ...], in_dim: int) -> torch.Tensor:
    """Inverse of `to_groups`: [G, m] back to `shape`."""
    moved = list(shape)
    size = moved.pop(in_dim)
    moved.append(size)
    return rows.reshape(moved).movedim(-1, in_dim)


def get_module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ConfigError(f"pdp: the model has no module '{name}'") from None


def originals(model: nn.Module, targets: Sequence[Target]) -> Dict[str, torch.Tensor]:
    """The unmasked weight of each target (the parametrization's ``original`` when one is registered)."""
    from torch.nn.utils import parametrize

    out = {}
    for t in targets:
        module = get_module(model, t.module)
        if parametrize.is_parametrized(module, t.param):
            out[t.name] = module.parametrizations[t.param].original
        else:
            out[t.name] = getattr(module, t.param)
    return out
