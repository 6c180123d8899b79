"""Random architectures for fuzzing the pruning engine, drawn with hypothesis strategies.

A model is described by a `ModelSpec` (plain data, printable, so a failing example is easy to minimise and keep)
and built by `FuzzNet`. Each input image [B, 3, H, W] takes its own stem branch; the branches are joined by add or
cat, then a random chain of blocks runs on the feature map [B, C, H, W]: convolutions (plain, grouped, depthwise),
BatchNorm, GroupNorm, residual adds, squeeze-excitation (mul broadcast over H, W), gating (mul), a per-channel scale
parameter [1, C, 1, 1] (mul broadcast over batch and space), cat of two
branches, chunk / split into branches, split halves added or multiplied, channel shuffle, a permute to channels-last
around a Linear, and a branch that takes one of two convolutions depending on the input (Python control flow on
the data, so one trace sees only one path). The head is a flatten of a pooled map into a Linear, or a token view
[B, N, C] through a multi-head attention block (separate q/k/v/o projections, a residual add, optionally a LayerNorm
over the tokens' features) averaged into a Linear.

    from hypothesis import given
    from prunekit.testing.fuzz_models import model_specs, build

    @given(model_specs())
    def test(spec):
        model, inputs = build(spec)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import torch
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

WIDTHS = (4, 6, 8, 12, 16)
IMAGE = 8  # input height and width


@dataclass(frozen=True)
class Block:
    """One step of the chain: `kind` names it, `args` are its integers (widths, kernel, groups...)."""

    kind: str
    args: Tuple[int, ...] = ()


@dataclass(frozen=True)
class ModelSpec:
    """A whole random model.

    Attributes:
        stems: output width of each input's stem conv (one input per entry).
        join: ``"add"`` or ``"cat"``: how the input branches meet (add needs equal widths).
        blocks: the chain on the joined feature map.
        head: ``("flatten", pool)`` or ``("attention", heads, head_dim, layernorm)``: layernorm 1 puts a
            LayerNorm over the token features before the average (its channels are then an inexact group).
        classes: output width.
    """

    stems: Tuple[int, ...]
    join: str
    blocks: Tuple[Block, ...]
    head: Tuple
    classes: int = 5
    seed: int = 0


def _divisors(n: int) -> List[int]:
    return [d for d in range(2, n + 1) if n % d == 0]


@st.composite
def _block(draw, width: int, full_shuffle: bool = True) -> Tuple[Block, int]:
    """One block valid on a `width`-channel map and the width it leaves (see `model_specs` for `full_shuffle`)."""
    kinds = ["conv", "conv_bn", "dwconv", "bn", "residual", "se", "gate", "scale", "cat", "permute_linear", "branch"]
    if width % 2 == 0:
        kinds += ["chunk", "split_add", "split_mul", "gconv", "gn", "shuffle"]
    kind = draw(st.sampled_from(kinds))
    if kind in ("conv", "conv_bn"):
        out = draw(st.sampled_from(WIDTHS))
        return Block(kind, (out, draw(st.sampled_from([1, 3])), int(draw(st.booleans())))), out
    if kind == "dwconv":
        return Block(kind, (draw(st.sampled_from([1, 3])),)), width
    if kind == "gconv":
        groups = draw(st.sampled_from(_divisors(width)))
        out = groups * draw(st.integers(1, 3))
        return Block(kind, (out, groups)), out
    if kind == "gn":
        return Block(kind, (draw(st.sampled_from(_divisors(width))),)), width
    if kind == "shuffle":
        groups = [d for d in _divisors(width) if full_shuffle or d < width] or [2]
        return Block(kind, (draw(st.sampled_from(groups)),)), width
    if kind == "residual":
        return Block(kind, (draw(st.sampled_from(WIDTHS)),)), width
    if kind == "se":
        return Block(kind, (draw(st.integers(2, 6)),)), width
    if kind == "cat":
        a, b = draw(st.sampled_from(WIDTHS)), draw(st.sampled_from(WIDTHS))
        return Block(kind, (a, b)), a + b
    if kind in ("permute_linear", "branch"):
        out = draw(st.sampled_from(WIDTHS))
        return Block(kind, (out,)), out
    if kind == "chunk":  # torch.split into two unequal parts, each through its own 1x1 conv, then cat
        first = draw(st.integers(1, width - 1))
        a, b = draw(st.sampled_from(WIDTHS)), draw(st.sampled_from(WIDTHS))
        return Block(kind, (first, a, b)), a + b
    if kind in ("split_add", "split_mul"):
        return Block(kind), width // 2
    return Block(kind), width  # bn, gate, scale


@st.composite
def model_specs(draw, max_blocks: int = 5, max_inputs: int = 2, full_shuffle: bool = True) -> ModelSpec:
    """Hypothesis strategy of `ModelSpec`s.

    Args:
        max_blocks / max_inputs: upper bounds on the chain length and on the number of inputs (stem branches).
        full_shuffle: allow a channel shuffle into as many groups as channels (one channel per group), which the
            engine must refuse (tests/fuzz/test_fuzz_regressions.py).
    """
    n_inputs = draw(st.integers(1, max_inputs))
    join = draw(st.sampled_from(["add", "cat"])) if n_inputs > 1 else "add"
    if join == "add":
        stems = (draw(st.sampled_from(WIDTHS)),) * n_inputs
        width = stems[0]
    else:
        stems = tuple(draw(st.sampled_from(WIDTHS)) for _ in range(n_inputs))
        width = sum(stems)
    blocks = []
    for _ in range(draw(st.integers(1, max_blocks))):
        block, width = draw(_block(width, full_shuffle))
        blocks.append(block)
    if draw(st.booleans()):
        head = ("flatten", draw(st.sampled_from([1, 2])))
    else:
        head = ("attention", draw(st.sampled_from([1, 2, 4])), draw(st.sampled_from([2, 4])), int(draw(st.booleans())))
    return ModelSpec(stems, join, tuple(blocks), head, seed=draw(st.integers(0, 2 ** 16)))


class Attention(nn.Module):
    """Multi-head self-attention on tokens [B, N, D] with separate q/k/v/o projections (heads are the units)."""

    def __init__(self, dim: int, num_heads: int, head_dim: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        inner = num_heads * head_dim
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, inner) for _ in range(3))
        self.o_proj = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (p(x).view(b, n, -1, self.head_dim).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, N, head_dim]
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))


def _conv(cin: int, cout: int, k: int = 1, groups: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=bias)


class FuzzBlock(nn.Module):
    """The module of one `Block` on a `width`-channel map [B, width, H, W]."""

    def __init__(self, block: Block, width: int):
        super().__init__()
        self.kind, self.args = block.kind, block.args
        kind, a = block.kind, block.args
        if kind in ("conv", "conv_bn"):
            self.conv = _conv(width, a[0], a[1], bias=bool(a[2]))
            if kind == "conv_bn":
                self.bn = nn.BatchNorm2d(a[0])
        elif kind == "dwconv":
            self.conv = _conv(width, width, a[0], groups=width)
        elif kind == "gconv":
            self.conv = _conv(width, a[0], 3, groups=a[1])
        elif kind == "bn":
            self.norm = nn.BatchNorm2d(width)
        elif kind == "gn":
            self.norm = nn.GroupNorm(a[0], width)
        elif kind == "residual":
            self.conv1, self.bn1 = _conv(width, a[0], 3, bias=False), nn.BatchNorm2d(a[0])
            self.conv2, self.bn2 = _conv(a[0], width, 3, bias=False), nn.BatchNorm2d(width)
        elif kind == "se":
            self.fc1, self.fc2 = _conv(width, a[0]), _conv(a[0], width)
        elif kind == "gate":
            self.conv = _conv(width, width)
        elif kind == "scale":  # a layer-scale style parameter [1, C, 1, 1]
            self.gamma = nn.Parameter(torch.ones(1, width, 1, 1))
        elif kind == "cat":
            self.left, self.right = _conv(width, a[0], 3), _conv(width, a[1])
        elif kind == "permute_linear":
            self.linear = nn.Linear(width, a[0])
        elif kind == "branch":  # which conv runs depends on the input (data-dependent Python control flow)
            self.left, self.right = _conv(width, a[0], 3), _conv(width, a[0])
        elif kind == "chunk":
            self.left, self.right = _conv(a[0], a[1]), _conv(width - a[0], a[2])

    def forward(self, x: torch.Tensor, flip: bool = False) -> torch.Tensor:
        """x [B, C, H, W] -> [B, C', H, W]; `flip` picks the second path of a ``branch`` block."""
        kind, a = self.kind, self.args
        if kind == "branch":
            return self.right(x) if flip else self.left(x)
        if kind in ("conv", "conv_bn"):
            y = self.conv(x)
            return F.relu(self.bn(y)) if kind == "conv_bn" else y
        if kind in ("dwconv", "gconv"):
            return F.relu(self.conv(x))
        if kind in ("bn", "gn"):
            return self.norm(x)
        if kind == "residual":
            return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        if kind == "se":  # [B, C, 1, 1] scale broadcast over H, W
            s = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
            return x * s
        if kind == "gate":
            return x * torch.sigmoid(self.conv(x))
        if kind == "scale":
            return x * self.gamma
        if kind == "cat":
            return torch.cat([self.left(x), self.right(x)], dim=1)
        if kind == "permute_linear":
            return self.linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        if kind == "chunk":
            left, right = torch.split(x, [a[0], x.shape[1] - a[0]], dim=1)
            return torch.cat([self.left(left), self.right(right)], dim=1)
        if kind == "split_add":
            left, right = x.chunk(2, dim=1)
            return left + right
        if kind == "split_mul":
            left, right = x.chunk(2, dim=1)
            return left * right
        if kind == "shuffle":
            b, c, h, w = x.shape
            return x.reshape(b, a[0], c // a[0], h, w).transpose(1, 2).reshape(b, c, h, w)
        raise ValueError(f"FuzzBlock: unknown block kind {kind!r}")


class FuzzNet(nn.Module):
    """The model a `ModelSpec` describes: forward(*images) with images [B, 3, H, W] -> logits [B, classes]."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.stems = nn.ModuleList(_conv(3, w, 3) for w in spec.stems)
        width = spec.stems[0] if spec.join == "add" else sum(spec.stems)
        blocks = []
        for block in spec.blocks:
            blocks.append(FuzzBlock(block, width))
            width = _width_after(block, width)
        self.blocks = nn.ModuleList(blocks)
        if spec.head[0] == "flatten":
            self.fc = nn.Linear(width * spec.head[1] ** 2, spec.classes)
        else:
            self.attn = Attention(width, spec.head[1], spec.head[2])
            self.norm = nn.LayerNorm(width) if len(spec.head) > 3 and spec.head[3] else nn.Identity()
            self.fc = nn.Linear(width, spec.classes)

    def forward(self, *images: torch.Tensor) -> torch.Tensor:
        feats = [F.relu(stem(x)) for stem, x in zip(self.stems, images)]
        x = sum(feats[1:], feats[0]) if self.spec.join == "add" else torch.cat(feats, dim=1)
        flip = bool(images[0].mean() > 0)  # per input: a sign, either way about half the time
        for block in self.blocks:
            x = block(x, flip)
        if self.spec.head[0] == "flatten":
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, self.spec.head[1]), 1))
        tokens = x.flatten(2).transpose(1, 2)  # [B, H*W, C]
        tokens = tokens + self.attn(tokens)
        return self.fc(self.norm(tokens).mean(dim=1))


def _width_after(block: Block, width: int) -> int:
    kind, a = block.kind, block.args
    if kind in ("conv", "conv_bn", "gconv", "permute_linear", "branch"):
        return a[0]
    if kind in ("cat",):
        return a[0] + a[1]
    if kind == "chunk":
        return a[1] + a[2]
    if kind in ("split_add", "split_mul"):
        return width // 2
    return width


def build(spec: ModelSpec, batch: int = 2) -> Tuple[FuzzNet, Tuple[torch.Tensor, ...]]:
    """The model in eval mode with seeded random weights and BatchNorm statistics, and example inputs.

    Returns:
        (model, inputs): inputs is a tuple of one image [batch, 3, 8, 8] per stem.
    """
    gen = torch.Generator().manual_seed(spec.seed)
    model = FuzzNet(spec)
    with torch.no_grad():
        for name, t in model.named_parameters():
            t.copy_(torch.randn(t.shape, generator=gen) * (0.5 if name.endswith("weight") else 0.1))
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):  # statistics far from identity, so masking must be right
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=gen) * 0.3)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)
    return model.eval(), random_inputs(spec, batch, gen)


def random_inputs(spec: ModelSpec, batch: int, gen: torch.Generator) -> Tuple[torch.Tensor, ...]:
    """One image [batch, 3, 8, 8] per stem."""
    return tuple(torch.randn(batch, 3, IMAGE, IMAGE, generator=gen) for _ in spec.stems)
