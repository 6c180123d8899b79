"""A split into code-constant parts plus ONE part whose size follows the tensor: the constant parts are pinned and
the free part is pruned exactly (checked against the masked original, outside the engine's own verification)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit
from prunekit.testing.fuzz_check import masked_original, relative_error


class Split(nn.Module):
    """conv a (16 channels) split along channels in one of several ways, each part through its own conv."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode
        self.a = nn.Conv2d(3, 16, 1)
        self.left, self.right, self.last = nn.Conv2d(5, 8, 1), nn.Conv2d(11, 8, 1), nn.Conv2d(5, 8, 1)
        self.middle = nn.Conv2d(6, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        c = y.shape[1]
        if self.mode == "head_fixed":  # torch.split(y, [5, c - 5])
            left, right = torch.split(y, [5, c - 5], dim=1)
            return self.left(left) + self.right(right)
        if self.mode == "method":
            left, right = y.split([5, c - 5], 1)
            return self.left(left) + self.right(right)
        if self.mode == "middle_free":  # fixed, free, fixed
            left, mid, last = torch.split(y, [5, c - 10, 5], dim=1)
            return self.left(left) + self.middle(mid) + self.last(last)
        if self.mode == "tensor_split":  # constant index: the remainder is free
            left, right = torch.tensor_split(y, [5], dim=1)
            return self.left(left) + self.right(right)
        if self.mode == "two_follow":  # two sizes from the shape: how each scales is unknown -> refused
            left, right = torch.split(y, [c // 4 + 1, c - c // 4 - 1], dim=1)
            return self.left(left) + self.right(right)
        left, right = torch.split(y, [5, 11], dim=1)  # "literal": every size a constant -> refused
        return self.left(left) + self.right(right)


@pytest.mark.parametrize("mode,kept_a", [("head_fixed", 5 + 6), ("method", 5 + 6), ("middle_free", 5 + 3 + 5),
                                         ("tensor_split", 5 + 6)])
def test_free_part_is_pruned_exactly_and_fixed_parts_are_kept(mode, kept_a):
    torch.manual_seed(0)
    model, x = Split(mode).eval(), torch.randn(2, 3, 4, 4)
    an = prunekit.analyze(model, x)
    a_groups = [g for g in an.groups if any(m.module == "a" and m.role == "out" for m in g.members)]
    fixed = [g for g in a_groups if not g.prunable]
    assert fixed and all("size fixed in the code" in g.reasons[0] for g in fixed)
    assert sum(g.size for g in fixed) == (10 if mode == "middle_free" else 5)
    plan = prunekit.plan(model, x, ratio=0.5, analysis=an)
    pruned = prunekit.apply(model, plan, x, verify=False)
    assert pruned.a.out_channels == kept_a
    # the fixed parts keep their channels (the first 5 rows of a, and for middle_free the last 5)
    assert torch.equal(pruned.a.weight[:5], model.a.weight[:5])
    if mode == "middle_free":
        assert torch.equal(pruned.a.weight[-5:], model.a.weight[-5:])
    removed = {gid: units for gid, units in plan.removed.items() if units}
    reference = masked_original(model, an.groups, removed)
    held_out = [(torch.randn(3, 3, 4, 4),), (torch.randn(1, 3, 5, 5),)]
    assert relative_error(pruned, reference, held_out) <= 1e-5


@pytest.mark.parametrize("mode", ["literal", "two_follow"])
def test_splits_without_a_single_free_part_are_refused(mode):
    model, x = Split(mode).eval(), torch.randn(2, 3, 4, 4)
    an = prunekit.analyze(model, x)
    a_groups = [g for g in an.groups if any(m.module == "a" and m.role == "out" for m in g.members)]
    assert a_groups and not any(g.prunable for g in a_groups)
    assert all("split into fixed sizes [5, 11]" in g.reasons[0] for g in a_groups)
