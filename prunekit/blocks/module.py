"""`BlockSparseLinear`: a linear layer that stores and multiplies only its kept weight blocks.

CPU path (one batched matmul over gathered inputs): with the input transposed to ``[in, T]`` and viewed as
``[C, bw, T]``, the column blocks each block-row needs are gathered with one ``index_select`` into
``[R, K * bw, T]`` (contiguous ``bw x T`` slabs, so the gather is a memcpy), and one ``bmm`` with the packed
weights ``[R, bh, K * bw]`` gives the output ``[R, bh, T]`` = ``[out, T]``. K is the largest number of blocks any
block-row keeps; rows with fewer are padded with zero blocks (exact, but wasted work: a *balanced* mask, the same K
in every row, wastes nothing). ``torch.sparse`` BSR is slower than dense at 50-75% sparsity on this CPU, so it is
used only on CUDA, where its kernels pay off.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..errors import ConfigError
from .layout import BlockShape, block_view


class BlockSparseLinear(nn.Module):
    """y = x W^T + b with W block-sparse.

    Args:
        weight: ``[out, in]`` dense weight (values of removed blocks are ignored).
        keep: ``[R, C]`` bool, True for kept blocks.
        block: the block shape.
        bias: ``[out]`` or None.

    Shapes: ``x [..., in] -> [..., out]``.

    Attributes (state dict): ``packed [R, bh, K * bw]`` the kept blocks row by row (a parameter, so a masked
    fine-tune trains only kept weights), ``block_index [R, K]`` their block-column ids, ``bias``.
    """

    def __init__(self, weight: torch.Tensor, keep: torch.Tensor, block, bias: Optional[torch.Tensor] = None):
        super().__init__()
        block = BlockShape.parse(block)
        out, inp = weight.shape
        if out % block.rows or inp % block.cols:
            raise ConfigError(f"BlockSparseLinear: weight {out}x{inp} is not divisible by the {block} block")
        rows, cols = out // block.rows, inp // block.cols
        if tuple(keep.shape) != (rows, cols):
            raise ConfigError(f"BlockSparseLinear: keep mask has shape {tuple(keep.shape)}, expected {(rows, cols)}")
        self.in_features, self.out_features, self.block = inp, out, block
        keep = keep.bool()
        k = max(int(keep.sum(1).max()), 1)
        # Kept column ids first (ascending), padding with column 0 whose packed weights are zero.
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :k]  # [R, K]
        valid = torch.gather(keep, 1, order)  # [R, K]
        blocks = block_view(weight.detach(), block)  # [R, C, bh, bw]
        picked = torch.gather(blocks, 1, order[:, :, None, None].expand(-1, -1, block.rows, block.cols))
        picked = picked * valid[:, :, None, None]
        self.packed = nn.Parameter(picked.permute(0, 2, 1, 3).reshape(rows, block.rows, k * block.cols).contiguous())
        self.register_buffer("block_index", torch.where(valid, order, torch.zeros_like(order)))
        self.register_buffer("valid", valid)
        self._balanced = bool(valid.all())
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        self._bsr = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, keep: torch.Tensor, block) -> "BlockSparseLinear":
        """From an ``nn.Linear`` and its ``[R, C]`` kept-block mask."""
        return cls(linear.weight, keep, block, linear.bias)

    @property
    def kept_per_row(self) -> int:
        return self.block_index.shape[1]

    def dense_weight(self) -> torch.Tensor:
        """The equivalent ``[out, in]`` dense weight (zeros in removed blocks)."""
        rows, k = self.block_index.shape
        bh, bw = self.block.rows, self.block.cols
        blocks = self.packed.detach().reshape(rows, bh, k, bw).permute(0, 2, 1, 3)  # [R, K, bh, bw]
        blocks = blocks * self.valid[:, :, None, None]
        dense = torch.zeros(rows, self.in_features // bw, bh, bw, dtype=blocks.dtype, device=blocks.device)
        dense.scatter_add_(1, self.block_index[:, :, None, None].expand(-1, -1, bh, bw), blocks)
        return dense.permute(0, 2, 1, 3).reshape(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ConfigError(f"BlockSparseLinear: input has {x.shape[-1]} features, expected {self.in_features}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if x2.is_cuda and not torch.is_grad_enabled():
            y = self._cuda_bsr(x2)
        else:
            y = self._gather_bmm(x2)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def _gather_bmm(self, x2: torch.Tensor) -> torch.Tensor:
        tokens = x2.shape[0]
        rows, k = self.block_index.shape
        xt = x2.t().contiguous().view(self.in_features // self.block.cols, self.block.cols, tokens)  # [C, bw, T]
        gathered = xt.index_select(0, self.block_index.reshape(-1)).view(rows, k * self.block.cols, tokens)
        weight = self.packed
        if not self._balanced:  # keep padding blocks at zero even while the packed weights train
            weight = weight * self.valid.repeat_interleave(self.block.cols, 1)[:, None, :]
        return torch.bmm(weight, gathered).view(self.out_features, tokens).t()  # [T, out]

    def _cuda_bsr(self, x2: torch.Tensor) -> torch.Tensor:
        key = (x2.device, self.packed._version)  # rebuilt when the packed weights change (e.g. after training)
        if self._bsr is None or self._bsr[0] != key:
            weight = self.dense_weight().to(x2.device, x2.dtype)
            self._bsr = (key, weight.to_sparse_bsr((self.block.rows, self.block.cols)))
        return (self._bsr[1] @ x2.t()).t()

    def extra_repr(self) -> str:
        rows, k = self.block_index.shape
        total = rows * (self.in_features // self.block.cols)
        kept = int(self.valid.sum())
        return (f"in_features={self.in_features}, out_features={self.out_features}, block={self.block}, "
                f"kept_blocks={kept}/{total}, per_row<={k}")
