"""A bounded, seeded run of the engine fuzzer: random architectures pruned through the public API, checked
independently against the masked original (prunekit.testing.fuzz_check); `benchmarks/fuzz.py` runs hundreds."""
from __future__ import annotations

import torch
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

import prunekit
from prunekit.testing.fuzz_check import ALLOCATORS, CRITERIA, masked_original, relative_error, run_case
from prunekit.testing.fuzz_models import Block, ModelSpec, build, model_specs


@settings(max_examples=25, derandomize=True, deadline=None, database=None, phases=[Phase.generate],
          suppress_health_check=list(HealthCheck))
@given(model_specs(), st.floats(0.25, 0.9), st.sampled_from(CRITERIA), st.sampled_from(ALLOCATORS))
def test_generated_models_prune_correctly_or_are_refused(spec, ratio, criterion, allocator):
    result = run_case(spec, ratio, criterion, allocator)
    assert result.outcome in ("ok", "refused"), f"{result.outcome}: {spec} ratio={ratio} {criterion}/{allocator}\n" \
                                                f"{result.detail}"
    if result.outcome == "ok":
        assert result.relative_error is not None and result.relative_error <= 1e-4


def test_independent_check_catches_a_wrong_removal():
    """The masked-original check is not vacuous: a pruned model with the wrong kept channels fails it."""
    spec = ModelSpec(stems=(8,), join="add", blocks=(Block("conv_bn", (8, 3, 1)),), head=("flatten", 2), seed=3)
    model, inputs = build(spec)
    analysis = prunekit.analyze(model, inputs)
    plan = prunekit.plan(model, inputs, ratio=0.5, criterion="l1", allocator="uniform")
    pruned = prunekit.apply(model, plan, inputs, verify=False)
    removed = {g: u for g, u in plan.removed.items() if u}
    assert removed
    held_out = [tuple(torch.randn(3, 3, 8, 8) for _ in spec.stems)]
    right = masked_original(model, analysis.groups, removed)
    assert relative_error(pruned, right, held_out) <= 1e-4
    gid = next(iter(removed))
    size = plan.group_sizes[gid]
    wrong_units = sorted(set(range(size)) - set(removed[gid]))[:len(removed[gid])]
    wrong = masked_original(model, analysis.groups, {**removed, gid: wrong_units})
    assert relative_error(pruned, wrong, held_out) > 1e-3
