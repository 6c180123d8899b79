"""Fused projections sliced at offsets: pruned per slice when the offsets follow the tensor in whole segments,
refused with a reason naming the producing module and the offsets otherwise."""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import prunekit

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _zoo_op_cases import build_op_case  # noqa: E402


def test_fused_qkv_and_gate_up_pruned_per_slice_and_verified():
    model, x, x_check = build_op_case("op_fused_slices")
    an = prunekit.analyze(model, x)
    heads, ffn = an.group("qkv"), an.group("gate_up")
    assert heads.prunable and heads.size == 4  # one unit per head, spanning its q, k and v slices
    assert ffn.prunable and ffn.size == 24  # gate row i goes with up row i
    pruned = prunekit.apply(model, prunekit.plan(model, x, ratio=0.5, analysis=an), x, held_out=x_check)
    report = pruned.prunekit_verification
    assert report.passed and max(report.errors) < 1e-4, report
    assert pruned.qkv.out_features == 3 * 8 * (heads.size - 2)  # whole heads removed from q, k and v alike
    assert pruned.gate_up.out_features == 2 * pruned.down.in_features == 24
    with torch.no_grad():  # the pruned model slices its own narrower output at the moved offsets
        assert pruned(torch.randn(1, 5, 32)).shape == (1, 5, 10)


class _OffsetAttention(nn.Module):
    """A fused qkv sliced at offsets partly written in the code: `shift` moves every slice by a constant."""

    def __init__(self, shift: int, dim: int = 32, heads: int = 4):
        super().__init__()
        self.shift, self.head_dim, self.q_size = shift, dim // heads, dim
        self.qkv, self.out = nn.Linear(dim, 3 * dim + shift), nn.Linear(dim, dim)

    def forward(self, x):
        b, t, _ = x.shape
        qkv = self.qkv(x)
        d, s = (qkv.shape[-1] - self.shift) // 3, self.shift
        if s == 0:  # offsets from an attribute (Phi-3 style): whole heads, but fixed in the code
            d = self.q_size
        q, k, v = (p.view(b, t, -1, self.head_dim).transpose(1, 2)
                   for p in (qkv[..., s:s + d], qkv[..., s + d:s + 2 * d], qkv[..., s + 2 * d:]))
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, -1)
        return self.out(y)


def test_slice_cutting_a_head_is_refused_naming_module_and_offsets():
    x = torch.randn(2, 6, 32)
    an = prunekit.analyze(_OffsetAttention(shift=4).eval(), x)  # every slice starts half a head late
    group = an.group("qkv")
    assert not group.prunable
    assert any("slice [4:36]" in r and "module 'qkv'" in r for r in group.reasons), group.reasons


def test_offsets_read_from_attributes_are_rewritten_on_whole_heads():
    """``qkv[..., s:s + self.q_size]``: the attributes are solved (q_size follows the kept heads, shift stays 0)."""
    x, held_out = torch.randn(2, 6, 32), torch.randn(1, 3, 32)
    model = _OffsetAttention(shift=0).eval()
    an = prunekit.analyze(model, x)
    assert an.group("qkv").prunable and an.group("qkv").size == 4
    pruned = prunekit.apply(model, prunekit.plan(model, x, ratio=0.5, analysis=an), x, held_out=held_out)
    assert pruned.prunekit_verification.passed and max(pruned.prunekit_verification.errors) < 1e-4
    assert (pruned.q_size, pruned.shift, model.q_size) == (16, 0, 32)


class _LiteralOffsets(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv, self.out = nn.Linear(32, 96), nn.Linear(32, 32)

    def forward(self, x):
        b, t, _ = x.shape
        qkv = self.qkv(x)
        q, k, v = (p.view(b, t, -1, 8).transpose(1, 2) for p in (qkv[..., :32], qkv[..., 32:64], qkv[..., 64:]))
        return self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, -1))


def test_offsets_fixed_in_the_code_are_refused_even_on_whole_heads():
    group = prunekit.analyze(_LiteralOffsets().eval(), torch.randn(2, 6, 32)).group("qkv")
    assert not group.prunable
    assert any("slice [:32]" in r and "fixed in the code" in r and "module 'qkv'" in r for r in group.reasons), \
        group.reasons


class _NarrowGateUp(nn.Module):
    """gate and up fused, split with narrow at offsets from the tensor (`follow`) or literals."""

    def __init__(self, follow: bool):
        super().__init__()
        self.follow, self.gate_up, self.down = follow, nn.Linear(8, 32), nn.Linear(16, 4)

    def forward(self, x):
        h = self.gate_up(x)
        d = h.shape[-1] // 2 if self.follow else 16
        return self.down(F.silu(h.narrow(-1, 0, d)) * h.narrow(-1, d, d))


def test_narrow_is_a_slice_pruned_in_halves_or_refused():
    x, held_out = torch.randn(3, 8), torch.randn(2, 8)
    model = _NarrowGateUp(follow=True).eval()
    an = prunekit.analyze(model, x)
    assert an.group("gate_up").prunable and an.group("gate_up").size == 16
    pruned = prunekit.apply(model, prunekit.plan(model, x, ratio=0.5, analysis=an), x, held_out=held_out)
    assert pruned.prunekit_verification.passed and pruned.gate_up.out_features == 16
    fixed = prunekit.analyze(_NarrowGateUp(follow=False).eval(), x).group("gate_up")
    assert not fixed.prunable and "slice [0:16]" in fixed.reasons[0] and "'narrow'" in fixed.reasons[0]
