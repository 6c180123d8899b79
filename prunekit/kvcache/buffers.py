"""`TokenBuffer`: a cache tensor that grows along its token axis in chunks.

A plain ``torch.cat`` per decoding step copies the whole cache every step (what ``DynamicCache`` does); a buffer
with spare room copies only when it is full. Its spare room is real memory, so `tensors` returns the whole
allocation and every byte figure counts it: right after prefill a buffer is allocated exactly (no spare room), and
while decoding it holds at most ``chunk`` spare tokens.
"""
from __future__ import annotations

from typing import List

import torch


class TokenBuffer:
    """Tokens along ``dim`` of ``data``; ``view()`` is the filled part.

    Attributes:
        data: the allocation. length: filled tokens. dim: the token axis. chunk: spare tokens added when growing.
    """

    def __init__(self, data: torch.Tensor, dim: int = 2, chunk: int = 64):
        self.data = data.contiguous()
        self.dim = dim
        self.length = data.shape[dim]
        self.chunk = chunk

    def view(self) -> torch.Tensor:
        return self.data.narrow(self.dim, 0, self.length)

    @property
    def shape(self):
        return self.view().shape

    def append(self, x: torch.Tensor) -> None:
        """Append ``x`` (same shape but along `dim`)."""
        n = x.shape[self.dim]
        if self.length + n > self.data.shape[self.dim]:
            shape = list(self.data.shape)
            shape[self.dim] = self.length + n + self.chunk
            grown = self.data.new_empty(shape)
            grown.narrow(self.dim, 0, self.length).copy_(self.view())
            self.data = grown
        self.data.narrow(self.dim, self.length, n).copy_(x)
        self.length += n

    def truncate(self, length: int) -> None:
        """Forget the tokens after the first `length` (the allocation is kept)."""
        self.length = min(self.length, max(0, int(length)))

    def tensors(self) -> List[torch.Tensor]:
        return [self.data]

    def index_batch(self, indices: torch.Tensor) -> "TokenBuffer":
        out = TokenBuffer(self.view().index_select(0, indices.to(self.data.device)), self.dim, self.chunk)
        return out
