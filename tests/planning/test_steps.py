"""The planning chain as public steps: same plan as prunekit.plan, nothing shared is mutated, real types, and the
budget search keeps uniform allocations uniform."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunekit
from prunekit.graph.types import Allocation, Budget, ChannelGroup, Scores
from prunekit.planning import (PlanConfig, allocate, analyse, cost_model, eligibility, make_plan, scoring,
                               selection)

from .test_plan_config import small_cnn


class WithLayerNorm(nn.Module):
    """A linear layer whose outputs pass a LayerNorm (inexact to prune) before another linear layer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.norm, self.b, self.c = nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.c(torch.relu(self.b(self.norm(self.a(x)))))


def snapshot(groups):
    return [(g.id, g.prunable, list(g.reasons), dict(g.tags)) for g in groups]


def test_steps_chain_equals_prunekit_plan_and_mutate_nothing():
    model, x = small_cnn(), torch.randn(2, 3, 8, 8)
    config = PlanConfig.from_dict({"criterion": "l1", "allocator": "global",
                                   "budget": {"target": "macs", "keep_fraction": 0.6}})
    analysis = analyse(model, x)
    before = snapshot(analysis.groups)
    weights = copy.deepcopy(model.state_dict())
    groups = eligibility(analysis, config)
    scores = scoring(model, groups, config, x)
    allocation = allocate(model, groups, scores, config, x)
    removed = selection(groups, scores, allocation)
    plan = make_plan(model, analysis, removed, allocation, config, x)
    assert snapshot(analysis.groups) == before
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert plan.removed == prunekit.plan(model, x, config).removed
    # the keyword form (compatibility path) builds the same config and the same plan
    assert plan.removed == prunekit.plan(model, x, criterion="l1", allocator="global",
                                         budget=Budget(target="macs", keep_fraction=0.6)).removed
    assert isinstance(scores, Scores) and scores.criterion == "l1"
    assert isinstance(allocation, Allocation) and allocation.ratio is not None
    assert abs(allocation.cost / allocation.base_cost - 0.6) <= 0.02 * 0.6
    assert allocation.removed_units() == sum(len(v) for v in plan.removed.values())
    macs = cost_model("macs", model, groups, x)
    assert macs(allocation) == pytest.approx(allocation.cost)


def test_eligibility_refuses_inexact_groups_on_copies():
    model, x = WithLayerNorm().eval(), torch.randn(3, 8)
    analysis = analyse(model, x)
    inexact = [g.id for g in analysis.groups if g.prunable and not g.exact]
    assert inexact, "the LayerNorm'd channels should be an inexact group"
    groups = eligibility(analysis, PlanConfig())
    assert all(not g.prunable and "allow_inexact" in g.reasons[-1] for g in groups if g.id in inexact)
    assert all(analysis.group(gid).prunable for gid in inexact)  # the analysis is untouched
    allowed = eligibility(analysis, PlanConfig.from_dict({"allow_inexact": True}))
    assert all(g.prunable for g in allowed if g.id in inexact)


def test_planning_a_model_in_train_mode_leaves_its_batchnorm_statistics():
    model = small_cnn().train()
    x = torch.randn(4, 3, 8, 8)
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    prunekit.plan(model, x, {"criterion": "activation", "budget": {"ratio": 0.25}})
    assert model.training and all(m.training for m in model.modules())
    for key, value in stats.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_scores_allocation_and_group_serialisation():
    model, x = small_cnn(), torch.randn(2, 3, 8, 8)
    analysis = analyse(model, x)
    for group in analysis.groups:
        again = ChannelGroup.from_dict(group.to_dict())
        assert again.to_dict() == group.to_dict()
        assert all(torch.equal(a.index_map, b.index_map) for a, b in zip(again.members, group.members))
    groups = eligibility(analysis, PlanConfig())
    scores = scoring(model, groups, PlanConfig(), x)
    scores.check(groups)
    bad = Scores({groups[0].id: torch.tensor([float("nan")] * groups[0].size)})
    with pytest.raises(Exception, match="finite"):
        bad.check(groups)
    allocation = allocate(model, groups, scores, PlanConfig.from_dict({"budget": {"ratio": 0.5}}), x)
    kept = allocation.kept(groups)
    assert all(kept[g.id] + allocation[g.id] == g.size for g in groups)
    assert set(allocation.to_dict()) == {"removed", "ratio", "cost", "target_cost", "base_cost"}


def test_uniform_stays_uniform_under_a_macs_budget_on_a_hugging_face_model():
    """Issue 24: the budget search's refinement used to give layers different head counts."""
    from prunekit.models import build, example_inputs

    model = build("hf_tiny_llama", pretrained=False).eval()
    ids = example_inputs("hf_tiny_llama")
    plan = prunekit.plan(model, ids, {"budget": {"target": "macs", "keep_fraction": 0.6}})
    sizes = plan.group_sizes
    removed = {gid: len(plan.removed.get(gid, [])) for gid in sizes}
    by_size = {}
    for gid, size in sizes.items():
        if removed[gid]:
            by_size.setdefault(size, set()).add(removed[gid])
    assert by_size, "something should have been removed"
    # every pruned group of one size loses the same count (uniform), so every layer keeps the same head count
    assert all(len(counts) == 1 for counts in by_size.values()), by_size
    head_groups = [gid for gid in sizes if "head" in gid or "attn" in gid]
    assert len({removed[g] for g in head_groups if sizes[g] == sizes[head_groups[0]]}) <= 1


def test_plan_to_budget_runs_the_public_steps_with_its_tolerance():
    from prunekit.methods.base import plan_to_budget

    model, x = small_cnn(width=64), torch.randn(2, 3, 8, 8)
    analysis = analyse(model, x)
    plan = plan_to_budget(model, x, analysis, "l1", "global", Budget(target="macs", keep_fraction=0.6))
    prov = plan.provenance
    assert prov["tolerance"] == 0.005 and prov["plan_config"]["tolerance"] == 0.005
    assert abs(prov["cost"] / prov["base_cost"] - 0.6) <= 0.005 * 0.6 + 1e-9
