"""Minimal models the fuzzer (benchmarks/fuzz.py) found the engine mis-handling, kept as regression tests."""
from __future__ import annotations

import pytest

import prunekit
from prunekit.testing.fuzz_check import run_case
from prunekit.testing.fuzz_models import Block, ModelSpec, build


def test_channel_shuffle_with_one_channel_per_group_is_refused_not_broken():
    """x.reshape(b, g, c // g, h, w) with g == c: the channel dim passes whole into the constant dim g (the size-1
    dim c // g is matched with the spatial dims), so removing channels would make the pruned model ask for
    [b, g, 0, h, w]. Found by the fuzzer as a crash at ratio 0.5; the engine must keep those channels."""
    spec = ModelSpec(stems=(4,), join="add", blocks=(Block("shuffle", (4,)),), head=("flatten", 1))
    model, inputs = build(spec)
    stem = [g for g in prunekit.analyze(model, inputs).groups if any(m.module == "stems.0" for m in g.members)]
    assert stem and not any(g.prunable for g in stem)
    assert any("reshape" in reason for g in stem for reason in g.reasons)
    result = run_case(spec, ratio=0.5, criterion="l1", allocator="uniform")
    assert result.outcome == "ok", result.detail


@pytest.mark.parametrize("groups", [2, 4])
def test_channel_shuffle_with_several_channels_per_group_still_prunes(groups):
    spec = ModelSpec(stems=(8,), join="add", blocks=(Block("shuffle", (groups,)),), head=("flatten", 1))
    result = run_case(spec, ratio=0.5, criterion="l1", allocator="uniform")
    assert result.outcome == "ok", result.detail
    assert result.pruned_groups >= 1
