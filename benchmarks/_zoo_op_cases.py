"""Zoo cases built from plain torch, one per operation class of the engine (shared by benchmarks/engine_zoo.py,
tests/graph/test_ops.py and tests/graph/test_branches.py): einsum, pixel shuffle / unshuffle, functional attention
(scaled_dot_product_attention and hand-written softmax attention, multi-head and grouped-query, projections not named
q_proj/k_proj/v_proj), mixture-of-experts with experts kept as 3-D parameters (used through F.linear and bmm), splits
whose sizes come from tensor shapes, fused projections sliced at offsets, and a forward that takes another branch
for other inputs (needs two example inputs).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn


class EinsumCase(nn.Module):
    """Element-wise gate, a parameter used by einsum, and two contractions. [B, T, 8] -> [B, T, 4]."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 32), nn.Linear(8, 32)
        self.w = nn.Parameter(torch.randn(16, 32) / 6)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        g = torch.einsum("btc,btc->btc", torch.relu(self.a(x)), self.b(x))
        h = torch.einsum("btc,oc->bto", g, self.w)
        s = torch.einsum("bsd,btd->bst", h, h)
        return self.head(torch.einsum("bst,btd->bsd", torch.softmax(s, -1), h))


class PixelShuffleCase(nn.Module):
    """conv -> pixel_shuffle(2) -> conv -> pixel_unshuffle(2) -> conv. [B, 3, H, W] -> [B, 4, H, W]."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 32, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1)
        self.c, self.head = nn.Conv2d(64, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = F.pixel_shuffle(torch.relu(self.a(x)), 2)
        y = F.pixel_unshuffle(torch.relu(self.b(y)), 2)
        return self.head(torch.relu(self.c(y)))


class FunctionalAttention(nn.Module):
    """Self-attention written with functions: projections q_lin/k_lin/v_lin/out_lin, heads read from
    ``view(B, T, -1, head_dim)``; `sdpa` picks F.scaled_dot_product_attention (with grouped-query heads when
    `kv_heads` < `heads`) or a hand-written softmax(q k^T / sqrt(d)) v. [B, T, 32] -> [B, T, 10]."""

    def __init__(self, dim: int = 32, heads: int = 4, kv_heads: int = 4, sdpa: bool = True):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim, self.sdpa = heads, kv_heads, dim // heads, sdpa
        self.inp = nn.Linear(dim, dim)
        self.q_lin = nn.Linear(dim, dim)
        self.k_lin = nn.Linear(dim, self.head_dim * kv_heads)
        self.v_lin = nn.Linear(dim, self.head_dim * kv_heads)
        self.out_lin = nn.Linear(dim, dim)
        self.norm, self.head = nn.RMSNorm(dim), nn.Linear(dim, 10)

    def forward(self, x):
        b, t, _ = x.shape
        x = self.inp(x)
        q, k, v = (lin(x).view(b, t, -1, self.head_dim).transpose(1, 2) for lin in (self.q_lin, self.k_lin,
                                                                                     self.v_lin))
        if self.sdpa:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.kv_heads != self.heads)
        else:
            s = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
            y = torch.softmax(s, dim=-1) @ v
        y = y.transpose(1, 2).reshape(b, t, -1)
        return self.head(self.norm(x + self.out_lin(y)))


class ExpertsCase(nn.Module):
    """A mixture of experts: a router (nn.Linear) picks the top 2 of 4 experts per token; the experts are 3-D
    parameters used through F.linear (gate and up fused, split in halves) and torch.bmm. [B, T, 32] -> [B, T, 10]."""

    def __init__(self, dim: int = 32, ffn: int = 24, experts: int = 4):
        super().__init__()
        self.inp, self.router = nn.Linear(dim, dim), nn.Linear(dim, experts, bias=False)
        self.gate_up = nn.Parameter(torch.randn(experts, 2 * ffn, dim) / math.sqrt(dim))
        self.down = nn.Parameter(torch.randn(experts, ffn, dim) / math.sqrt(ffn))  # used as x @ down[e]
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        h = self.inp(x)
        flat = h.reshape(-1, h.shape[-1])
        weights, chosen = torch.softmax(self.router(flat), -1).topk(2, dim=-1)
        out = torch.zeros_like(flat)
        for e in range(self.gate_up.shape[0]):
            rows, slot = torch.where(chosen == e)
            if rows.numel() == 0:
                continue
            gate, up = F.linear(flat[rows], self.gate_up[e]).chunk(2, dim=-1)
            y = torch.bmm((F.silu(gate) * up).unsqueeze(0), self.down[e].unsqueeze(0)).squeeze(0)
            out = out.index_add(0, rows, y * weights[rows, slot, None])
        return self.head(h + out.reshape(h.shape))


class ShapeSplitCase(nn.Module):
    """One conv producing q, k and v split by ``x.split(x.shape[1] // 3)``. [B, 3, H, W] -> [B, 8, H, W]."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 48, 1), nn.Conv2d(16, 8, 1)

    def forward(self, x):
        y = self.a(x)
        q, k, v = y.split(y.shape[1] // 3, dim=1)
        return self.b(q * torch.sigmoid(k) + v)


class FusedSliceCase(nn.Module):
    """One linear producing q, k and v, and one producing gate and up, sliced at offsets read from the tensor
    (``qkv[..., :d]``, ``qkv[..., d:2 * d]``, ``h[..., d:]``); attention by F.scaled_dot_product_attention, heads
    read from ``view(B, T, -1, head_dim)``. [B, T, 32] -> [B, T, 10]."""

    def __init__(self, dim: int = 32, heads: int = 4, ffn: int = 24):
        super().__init__()
        self.head_dim = dim // heads
        self.inp, self.qkv, self.out = nn.Linear(dim, dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.gate_up, self.down = nn.Linear(dim, 2 * ffn), nn.Linear(ffn, dim)
        self.norm, self.head = nn.RMSNorm(dim), nn.Linear(dim, 10)

    def forward(self, x):
        b, t, _ = x.shape
        x = self.inp(x)
        qkv = self.qkv(x)
        d = qkv.shape[-1] // 3
        q, k, v = (s.view(b, t, -1, self.head_dim).transpose(1, 2)
                   for s in (qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, -1)
        x = x + self.out(y)
        h = self.gate_up(self.norm(x))
        half = h.shape[-1] // 2
        x = x + self.down(F.silu(h[..., :half]) * h[..., half:])
        return self.head(x)


class BranchCase(nn.Module):
    """A forward that takes another path for larger images (`big` runs only from 16 pixels up). [B, 3, H, W] ->
    [B, 4, H, W]; pruning it needs an example input per branch (`prunekit.Examples`)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.big = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.small = nn.Conv2d(16, 16, 1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        y = self.big(y) if x.shape[-1] >= 16 else self.small(y)
        return self.head(torch.relu(y))


def _tokens(shape) -> Callable[[int], torch.Tensor]:
    return lambda seed: torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


OP_CASES: Dict[str, Tuple[Callable[[], nn.Module], Callable[[int], Any]]] = {
    "op_einsum": (EinsumCase, _tokens((2, 6, 8))),
    "op_pixel_shuffle": (PixelShuffleCase, _tokens((2, 3, 8, 8))),
    "op_sdpa_attention": (lambda: FunctionalAttention(sdpa=True), _tokens((2, 6, 32))),
    "op_sdpa_gqa_attention": (lambda: FunctionalAttention(kv_heads=2, sdpa=True), _tokens((2, 6, 32))),
    "op_softmax_attention": (lambda: FunctionalAttention(sdpa=False), _tokens((2, 6, 32))),
    "op_experts_3d_params": (ExpertsCase, _tokens((2, 6, 32))),
    "op_split_from_shape": (ShapeSplitCase, _tokens((2, 3, 8, 8))),
    "op_fused_slices": (FusedSliceCase, _tokens((2, 6, 32))),
    "op_branch_two_examples": (BranchCase, lambda seed: (_tokens((2, 3, 8, 8))(seed), _tokens((2, 3, 16, 16))(seed))),
}


def build_op_case(name: str, seed: int = 0) -> Tuple[nn.Module, Any, Any]:
    """(model in eval mode, example inputs, check inputs from another seed). The branch case returns a pair of
    batches for each (one per branch), to be wrapped in `prunekit.Examples`."""
    factory, inputs = OP_CASES[name]
    torch.manual_seed(seed)
    return factory().eval(), inputs(seed), inputs(seed + 1)
