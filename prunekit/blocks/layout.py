"""Which weights are block-pruned, and how a weight matrix is cut into blocks.

A target is one 2-D weight ``[out, in]`` of a linear map: an ``nn.Linear`` weight, or the packed q/k/v projection
``in_proj_weight`` of ``nn.MultiheadAttention``. Its blocks are ``bh x bw`` tiles (``bh`` output rows by ``bw``
input columns), numbered row-major: block ``r * C + c`` covers rows ``r*bh:(r+1)*bh`` and columns
``c*bw:(c+1)*bw``, with ``R = out / bh`` block-rows and ``C = in / bw`` block-columns.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import ConfigError

SUPPORTED_BLOCKS = ((16, 16), (32, 32), (32, 64), (64, 32))


@dataclass(frozen=True)
class BlockShape:
    """A block of ``rows x cols`` weights (rows along the output dim, cols along the input dim)."""

    rows: int
    cols: int

    def __post_init__(self):
        if self.rows < 1 or self.cols < 1:
            raise ConfigError(f"prunekit.blocks: block shape must be positive, got {self.rows}x{self.cols}")

    @classmethod
    def parse(cls, spec) -> "BlockShape":
        """From ``"32x64"``, ``(32, 64)``, ``32`` (square) or a BlockShape."""
        if isinstance(spec, BlockShape):
            return spec
        if isinstance(spec, int):
            return cls(spec, spec)
        if isinstance(spec, str):
            parts = spec.lower().split("x")
            try:
                values = [int(p) for p in parts]
            except ValueError:
                values = []
            if len(values) in (1, 2):
                return cls(values[0], values[-1])
            raise ConfigError(f"prunekit.blocks: block shape must look like '32x32', got {spec!r}")
        if isinstance(spec, (tuple, list)) and len(spec) == 2:
            return cls(int(spec[0]), int(spec[1]))
        raise ConfigError(f"prunekit.blocks: cannot read a block shape from {spec!r}")

    def __str__(self) -> str:
        return f"{self.rows}x{self.cols}"


@dataclass(frozen=True)
class BlockTarget:
    """One block-pruned weight.

    Attributes:
        param: fully qualified parameter name (e.g. ``"encoder.layer.0.intermediate.dense.weight"``).
        module: name of the module owning it.
        shape: ``(out, in)``.
        block: the block shape.
        swappable: True for an ``nn.Linear`` weight (its module can become a `BlockSparseLinear`).
    """

    param: str
    module: str
    shape: Tuple[int, int]
    block: BlockShape
    swappable: bool

    @property
    def grid(self) -> Tuple[int, int]:
        """``(R, C)``: block-rows and block-columns."""
        return self.shape[0] // self.block.rows, self.shape[1] // self.block.cols

    @property
    def num_blocks(self) -> int:
        r, c = self.grid
        return r * c

    @property
    def block_numel(self) -> int:
        return self.block.rows * self.block.cols


def _weights(model: nn.Module) -> List[Tuple[str, str, torch.Tensor, bool]]:
    """(param name, module name, tensor, swappable) for every linear-map weight of `model`."""
    found = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, nn.Linear):
            found.append((f"{prefix}weight", name, module.weight, True))
        elif isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
            found.append((f"{prefix}in_proj_weight", name, module.in_proj_weight, False))
    return found


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def find_targets(model: nn.Module, block, include: Sequence[str] = ("*",),
                 exclude: Sequence[str] = ()) -> Tuple[List[BlockTarget], List[str]]:
    """The weights of `model` to block-prune.

    A weight is a target when its parameter name or its module name matches an `include` pattern (fnmatch) and no
    `exclude` pattern. With the default ``include=("*",)`` weights whose shape the block does not divide are skipped
    (and returned); a weight named by a more specific pattern must be divisible, or this raises.

    Args:
        model: any torch model (Hugging Face or plain).
        block: block shape (`BlockShape.parse` accepts ``"32x32"``).
        include / exclude: name patterns.

    Returns:
        ``(targets, skipped)``: targets in module order, and the parameter names skipped for shape.

    Raises:
        ConfigError: no weight matched, or an explicitly included weight is not divisible by the block.
    """
    block = BlockShape.parse(block)
    targets, skipped = [], []
    for param, module, weight, swappable in _weights(model):
        names = (param, module)
        if not any(_matches(n, include) for n in names) or any(_matches(n, exclude) for n in names):
            continue
        out, inp = weight.shape
        if out % block.rows or inp % block.cols:
            if tuple(include) == ("*",):
                skipped.append(param)
                continue
            raise ConfigError(f"prunekit.blocks: weight '{param}' has shape {out}x{inp}, not divisible by the "
                              f"{block} block; exclude it or choose another block shape")
        targets.append(BlockTarget(param, module, (out, inp), block, swappable))
    if not targets:
        raise ConfigError(f"prunekit.blocks: no linear weight of {type(model).__name__} matches "
                          f"include={list(include)} exclude={list(exclude)} with a {block} block "
                          f"(skipped for shape: {skipped[:5]})")
    return targets, skipped


def block_view(weight: torch.Tensor, block: BlockShape) -> torch.Tensor:
    """``[out, in]`` -> ``[R, C, bh, bw]`` (a copy laid out block by block)."""
    out, inp = weight.shape
    r, c = out // block.rows, inp // block.cols
    return weight.reshape(r, block.rows, c, block.cols).permute(0, 2, 1, 3)


def block_sums(values: torch.Tensor, block: BlockShape) -> torch.Tensor:
    """Sum of `values` ``[out, in]`` inside each block: ``[R, C]``."""
    out, inp = values.shape
    return values.reshape(out // block.rows, block.rows, inp // block.cols, block.cols).sum(dim=(1, 3))


def element_mask(removed: torch.Tensor, target: BlockTarget) -> torch.Tensor:
    """The ``[out, in]`` 0/1 mask (1 = kept) of `target` with the flat block ids `removed` zeroed."""
    r, c = target.grid
    keep = torch.ones(r * c)
    keep[removed.long()] = 0.0
    keep = keep.view(r, c)
    return keep.repeat_interleave(target.block.rows, 0).repeat_interleave(target.block.cols, 1)


def parameter(model: nn.Module, name: str) -> torch.Tensor:
    """`model`'s parameter `name`, with an error naming it when missing."""
    params: Dict[str, torch.Tensor] = dict(model.named_parameters())
    if name not in params:
        raise ConfigError(f"prunekit.blocks: {type(model).__name__} has no parameter '{name}'")
    return params[name]


def targets_for(model: nn.Module, block, names: Optional[Sequence[str]] = None) -> List[BlockTarget]:
    """Targets for exactly the parameter `names` (used when replaying a plan)."""
    wanted = list(names or [])
    targets, _ = find_targets(model, block, include=wanted or ("*",))
    by_param = {t.param: t for t in targets}
    missing = [n for n in wanted if n not in by_param]
    if missing:
        raise ConfigError(f"prunekit.blocks: the model has no block-prunable weight(s) {missing[:5]}")
    return [by_param[n] for n in wanted]
