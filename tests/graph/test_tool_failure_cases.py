"""The cases on which Torch-Pruning fails or is silently wrong: prunekit prunes them and verifies exactly."""
import pytest
import torch

import prunekit
from prunekit.metrics.params import count_parameters

from .cases import CASES, C2fLike, MaskMul


@pytest.mark.parametrize("name", sorted(CASES))
def test_case_prunes_half_and_verifies(name):
    cls, shape = CASES[name]
    torch.manual_seed(0)
    model = cls().eval()
    x = torch.randn(shape)
    pruned, plan = prunekit.prune(model, x, ratio=0.5)
    report = pruned.prunekit_verification
    assert report.passed and report.relative_error < 1e-5, report
    assert count_parameters(pruned) < 0.7 * count_parameters(model)
    assert any(plan.removed.values())
    # the pruned model is an ordinary model: it runs on another input with the same outputs as the masked original
    x2 = torch.randn(shape)
    check = prunekit.verify(model, pruned, plan, x2)
    assert check.passed and check.relative_error < 1e-5


def test_chunk_halves_lose_the_same_positions():
    model = C2fLike().eval()
    an = prunekit.analyze(model, torch.randn(2, 3, 16, 16))
    cv1 = [g for g in an.groups if any(m.module == "cv1" and m.role == "out" for m in g.members)]
    assert len(cv1) == 1 and cv1[0].prunable
    member = next(m for m in cv1[0].members if m.module == "cv1" and m.param == "weight")
    # each unit owns position i of the first half and i + 16 of the second
    assert member.index_map.shape == (16, 2)
    assert torch.equal(member.index_map[:, 1] - member.index_map[:, 0], torch.full((16,), 16))


def test_broadcast_mask_couples_nothing():
    model = MaskMul().eval()
    an = prunekit.analyze(model, torch.randn(2, 3, 8, 8))
    feature = next(g for g in an.groups if g.id == "a")
    assert feature.prunable and feature.size == 16
    assert {m.module for m in feature.members} == {"a", "mask", "b"}  # mask conv reads the features, nothing more
    mask = next(g for g in an.groups if g.id == "mask")
    assert mask.size == 1  # its single channel is its own group
