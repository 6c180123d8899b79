"""Allocation policies, constraints, budget search, schedules and selection."""
import math

import pytest
import torch

from prunekit.allocate import ALLOCATORS
from prunekit.allocate.base import apply_constraints
from prunekit.allocate.budget import allocate_budget, params_cost
from prunekit.allocate.global_rank import GlobalRank
from prunekit.allocate.schedule import PruningSchedule
from prunekit.allocate.scoped import Scoped
from prunekit.allocate.select import select
from prunekit.allocate.uniform import Uniform
from prunekit.errors import ConfigError, UnknownNameError
from prunekit.graph.types import Budget, ChannelGroup, GroupMember
from prunekit.importance.base import create

from tests.importance.fixtures import resnet20, resnet20_inner_groups

torch.set_num_threads(2)


def group(gid, size, module=None, unit="channel", **kw):
    module = module or gid
    members = [GroupMember(module, "weight", 0, torch.arange(size)[:, None], "out"),
               GroupMember(f"{module}_next", "weight", 1, torch.arange(size)[:, None], "in")]
    return ChannelGroup(gid, size, members, unit=unit, **kw)


def seeded_scores(groups, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {g.id: torch.rand(g.size, generator=gen) + 0.1 for g in groups}


def test_uniform_removes_floor_or_round_of_ratio():
    groups = [group("a", 10), group("b", 16), group("c", 7), group("d", 8, prunable=False), group("e", 9)]
    scores = seeded_scores(groups)
    del scores["e"]  # a criterion without signal for e: left alone
    alloc = Uniform().allocate(groups, scores, Budget(ratio=0.3))
    assert alloc == {"a": 3, "b": 4, "c": 2, "d": 0, "e": 0}
    assert Uniform(rounding="round").allocate(groups, scores, Budget(ratio=0.3)) == {"a": 3, "b": 5, "c": 2, "d": 0,
                                                                                     "e": 0}
    assert Uniform().allocate(groups, None, Budget(ratio=0.3))["e"] == 2  # no scores needed to allocate


def test_global_rank_removes_globally_lowest_normalised_scores():
    groups = [group("a", 8), group("b", 8)]
    scores = {"a": torch.arange(1.0, 9.0), "b": torch.arange(10.0, 90.0, 10.0)}
    # raw scores: all of a is below b, but a may lose only 7 (never all), so the 8th unit comes from b
    assert GlobalRank(normalizer="none").allocate(groups, scores, Budget(ratio=0.5)) == {"a": 7, "b": 1}
    # mean-normalised, a and b are identical: half of the 8 lowest come from each
    assert GlobalRank().allocate(groups, scores, Budget(ratio=0.5)) == {"a": 4, "b": 4}
    # random groups: counts equal a brute-force sort of every normalised score
    groups = [group(f"g{i}", s) for i, s in enumerate((12, 20, 33, 7, 16))]
    scores = seeded_scores(groups, seed=3)
    alloc = GlobalRank().allocate(groups, scores, Budget(ratio=0.3))
    flat = [(float(v / scores[g.id].mean()), g.id) for g in groups for v in scores[g.id]]
    lowest = sorted(flat)[: int(0.3 * sum(g.size for g in groups))]
    assert alloc == {g.id: sum(1 for _, gid in lowest if gid == g.id) for g in groups}
    assert len(set(alloc.values())) > 1  # not uniform


def test_global_rank_keeps_heads_and_channels_apart():
    groups = [group("mlp", 16), group("attn", 4, unit="head")]
    scores = {"mlp": torch.linspace(0.1, 1.0, 16), "attn": torch.tensor([5.0, 6.0, 7.0, 8.0])}
    alloc = GlobalRank(normalizer="none").allocate(groups, scores, Budget(ratio=0.5))
    assert alloc == {"mlp": 8, "attn": 2}


def test_scoped_uses_per_scope_ratios():
    groups = [group("b1", 8, "backbone.0"), group("b2", 8, "backbone.1"), group("h1", 8, "head.0"),
              group("n1", 8, "neck.0")]
    scores = {"b1": torch.arange(1.0, 9.0), "b2": torch.arange(1.0, 9.0) * 10, "h1": torch.arange(1.0, 9.0),
              "n1": torch.arange(1.0, 9.0)}
    policy = Scoped(ratios={"backbone.*": 0.25, "head.*": 0.75}, normalizer="none")
    alloc = policy.allocate(groups, scores, Budget(ratio=0.5))
    assert alloc == {"b1": 4, "b2": 0, "h1": 6, "n1": 4}  # one ranking in the backbone scope: b1 is lower
    assert {k: [g.id for g in v] for k, v in policy.scopes(groups).items()} == {
        "backbone.*": ["b1", "b2"], "head.*": ["h1"], "default": ["n1"]}
    # scopes from tags: feature-map stride, and ratios relative to the budget ratio
    tagged = [group("s8a", 8, tags={"scale": 8}), group("s8b", 8, tags={"scale": 8}),
              group("s16", 8, tags={"scale": 16}), group("untagged", 8)]
    tscores = {g.id: torch.arange(1.0, 9.0) for g in tagged}
    by_scale = Scoped(by=("scale",), ratios={"8": 0.25, "16": 0.5}, default_ratio=0.125)
    assert by_scale.allocate(tagged, tscores, Budget(ratio=0.9)) == {"s8a": 2, "s8b": 2, "s16": 4, "untagged": 1}
    relative = Scoped(by="scale", ratios={"8": 0.5, "16": 1.5}, relative=True)
    assert relative.allocate(tagged, tscores, Budget(ratio=0.5)) == {"s8a": 2, "s8b": 2, "s16": 6, "untagged": 4}
    with pytest.raises(ConfigError, match="scope"):
        Scoped(ratios={"x": 1.2})


def test_constraints():
    groups = [group("min", 8, min_keep=6), group("ratio", 20), group("r8", 64), group("r4", 64, round_to=4),
              group("heads", 12, unit="head", round_to=2), group("frozen", 16, prunable=False), group("all", 5)]
    proposal = {"min": 5, "ratio": 10, "r8": 13, "r4": 1, "heads": 5, "frozen": 8, "all": 5}
    out = apply_constraints(groups, proposal)
    assert out["min"] == 2 and out["frozen"] == 0 and out["all"] == 4  # min_keep, unprunable, never all
    assert out["heads"] == 4 and out["r4"] == 0  # kept 8 heads (multiple of 2); kept 64 (63 -> 64)
    out = apply_constraints(groups, proposal, max_ratio=0.25, min_keep_channels=3)
    assert out["ratio"] == 5 and out["all"] == 1  # floor(0.25 * 20); floor(0.25 * 5)
    assert apply_constraints(groups, proposal, min_keep_channels=3)["all"] == 2
    out = apply_constraints(groups, proposal, max_ratio=0.25, min_keep_channels=3, round_to=8)
    assert out["ratio"] == 4  # 5 allowed, kept 15 rounds up to 16
    assert out["all"] == 0  # no multiple of 8 fits in 5 channels: left whole
    assert (64 - out["r8"]) % 8 == 0 and 0 < out["r8"] <= 13  # kept 56
    assert out["r8"] == 8
    assert out["heads"] == 2  # heads ignore the channel round_to but keep their own (max_ratio 0.25 -> 3 -> keep 10)
    assert out["min"] == 0 and out["frozen"] == 0  # keeping 6 rounds up to 8: whole
    with pytest.raises(ConfigError, match="unknown groups"):
        apply_constraints(groups, {"nope": 1})
    # policies apply the same constraints
    scores = seeded_scores(groups)
    alloc = GlobalRank(round_to=8, max_ratio=0.5).allocate(groups, scores, Budget(ratio=0.6))
    for g in groups:
        kept = g.size - alloc[g.id]
        if g.unit == "channel" and alloc[g.id]:
            assert kept % 8 == 0, (g.id, kept)
        assert alloc[g.id] <= g.size // 2 and kept >= max(g.min_keep, 1)
    assert alloc["frozen"] == 0


def test_budget_patterns_and_errors():
    groups = [group("a", 8, "backbone.conv"), group("b", 8, "fc")]
    groups[0].members[1].module = "fc"  # a's consumer is fc: ignoring fc must not protect a
    scores = seeded_scores(groups)
    assert Uniform().allocate(groups, scores, Budget(ratio=0.5, ignore=("fc",))) == {"a": 4, "b": 0}
    assert Uniform().allocate(groups, scores, Budget(ratio=0.5, targets=("backbone.*",))) == {"a": 4, "b": 0}
    with pytest.raises(ConfigError, match="allocate_budget"):
        Uniform().allocate(groups, scores, Budget(target="params", keep_fraction=0.5))
    with pytest.raises(UnknownNameError, match="uniform"):
        ALLOCATORS.get("unifrom")
    for name in ALLOCATORS.names():
        alloc = ALLOCATORS.get(name)().allocate(groups, scores, Budget(ratio=0.5))
        assert set(alloc) == {"a", "b"} and all(0 <= v < 8 for v in alloc.values())


@pytest.mark.parametrize("policy", [Uniform(), GlobalRank(), Scoped(by=("scale",), ratios={"1": 1.5}, relative=True)])
def test_budget_search_hits_synthetic_params_target(policy):
    sizes = (64, 128, 256, 96, 48)
    weights = (9.0, 20.0, 3.5, 50.0, 1.0)
    groups = [group(f"g{i}", s, tags={"scale": i % 2}) for i, s in enumerate(sizes)]
    scores = seeded_scores(groups, seed=1)
    per_unit = dict(zip((g.id for g in groups), weights))

    def cost(allocation):
        return sum(per_unit[g.id] * (g.size - allocation.get(g.id, 0)) for g in groups)

    for keep in (0.4, 0.6, 0.8):
        result = allocate_budget(policy, groups, scores, Budget(target="params", keep_fraction=keep), cost=cost)
        assert result.relative_error <= 0.02, (keep, result)
        assert result.cost == pytest.approx(cost(result.allocation))
        assert result.base_cost == pytest.approx(cost({}))
    with pytest.raises(ConfigError, match="unreachable"):
        allocate_budget(Uniform(max_ratio=0.2), groups, scores, Budget(target="params", keep_fraction=0.5), cost=cost)
    plain = allocate_budget(policy, groups, scores, Budget(ratio=0.3), cost=cost)
    assert plain.allocation == policy.allocate(groups, scores, Budget(ratio=0.3))


def test_params_budget_on_real_resnet20():
    model = resnet20()
    groups = resnet20_inner_groups(model)
    count = params_cost(model, groups)
    total = sum(p.numel() for p in model.parameters())
    assert count({}) == total
    # removing 3 channels of layer2.1's inner group removes 3 conv1 filters, 3 BN (weight, bias), 3 conv2 columns
    assert total - count({"layer2.1.conv1": 3}) == 3 * (32 * 9 + 2 + 32 * 9)
    scores = create("l1").score(model, groups)
    result = allocate_budget(GlobalRank(round_to=4), groups, scores, Budget(target="params", keep_fraction=0.75),
                             model=model)
    assert result.relative_error <= 0.02
    # the params left equal a physical count of the pruned shapes
    removed = select(groups, scores, result.allocation)
    left = total
    for g in groups:
        n = len(removed.get(g.id, []))
        conv1 = model.get_submodule(g.members[0].module).weight
        conv2 = model.get_submodule(g.members[-1].module).weight
        left -= n * (conv1[0].numel() + 2 + conv2[:, 0].numel())
        assert (g.size - n) % 4 == 0
    assert left == pytest.approx(result.cost)
    assert abs(left / total - 0.75) <= 0.02 * 0.75


def test_schedule_values():
    lin = PruningSchedule(0.5, 5)
    assert lin.ratios() == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert lin.step_ratio(2) == pytest.approx(0.1 / 0.9)
    geo = PruningSchedule(0.75, 2, kind="geometric")
    assert geo.ratios() == pytest.approx([0.5, 0.75])
    assert [geo.step_ratio(k) for k in (1, 2)] == pytest.approx([0.5, 0.5])
    cubic = PruningSchedule(0.8, 4, kind="cubic")
    values = cubic.ratios()
    assert values[-1] == pytest.approx(0.8) and all(b > a for a, b in zip(values, values[1:]))
    assert values[0] - 0 > values[-1] - values[-2]  # prunes fast first, slowly at the end
    assert [lin.step() for _ in range(6)] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.5])
    assert lin.get_ratio() == pytest.approx(0.5) and list(lin) == pytest.approx(lin.ratios())
    with pytest.raises(ConfigError):
        PruningSchedule(1.0, 3)
    with pytest.raises(ConfigError):
        PruningSchedule(0.5, 3, kind="cosine")


def test_select_lowest_scores():
    groups = [group("a", 6), group("b", 4)]
    scores = {"a": torch.tensor([0.5, 0.1, 0.9, 0.1, 0.3, 0.7]), "b": torch.tensor([1.0, 2.0, 3.0, 4.0])}
    removed = select(groups, scores, {"a": 3, "b": 0})
    assert set(removed) == {"a"}
    assert removed["a"].tolist() == [1, 3, 4] and removed["a"].dtype == torch.long
    with pytest.raises(ConfigError, match="no scores"):
        select(groups, {"a": scores["a"]}, {"b": 1})
    with pytest.raises(ConfigError, match="all"):
        select(groups, scores, {"b": 4})
    # end to end with a policy: the kept units all score at least as high as the removed ones
    groups = [group(f"g{i}", s) for i, s in enumerate((10, 24, 17))]
    scores = seeded_scores(groups, seed=5)
    alloc = GlobalRank().allocate(groups, scores, Budget(ratio=0.4))
    for gid, idx in select(groups, scores, alloc).items():
        keep = torch.ones(scores[gid].numel(), dtype=torch.bool)
        keep[idx] = False
        assert len(idx) == alloc[gid] and scores[gid][idx].max() <= scores[gid][keep].min()
    assert math.isclose(sum(alloc.values()), int(0.4 * 51))


def test_round_to_auto_uses_the_hardware_channel_block(monkeypatch):
    from prunekit.allocate import hardware

    for capability, block in (("AVX512", 16), ("AVX2", 8), ("DEFAULT", 8)):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda c=capability: c)
        assert hardware.simd_channels("cpu") == block
        assert hardware.resolve_round_to("auto", torch.nn.Linear(2, 2)) == block
    assert hardware.simd_channels("cuda") == 8
    assert hardware.resolve_round_to("16") == 16 and hardware.resolve_round_to(None) is None
    with pytest.raises(ConfigError, match="round_to"):
        hardware.resolve_round_to("fast")
    # through the API: kept widths are multiples of the resolved block, recorded in the plan
    import prunekit

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    model = resnet20()
    x = torch.randn(2, 3, 32, 32)
    plan = prunekit.plan(model, x, ratio=0.6, round_to="auto")
    assert plan.provenance["round_to"] == 16
    for group_id, removed in plan.removed.items():
        kept = plan.group_sizes[group_id] - len(removed)
        assert kept % 16 == 0 or not removed, (group_id, kept)


def test_uniform_budget_search_keeps_alike_groups_alike():
    """Twelve 'layers' of three group shapes (heads, MLP channels, a wide stem): the search reaches the target within
    tolerance and every group of one shape loses the same count (uniform stays uniform)."""
    groups = [group(f"attn{i}", 8, unit="head") for i in range(4)] + \
        [group(f"mlp{i}", 96, round_to=8) for i in range(4)] + [group(f"stem{i}", 40) for i in range(4)]
    weights = {"attn": 300.0, "mlp": 11.0, "stem": 7.0}
    scores = seeded_scores(groups, seed=3)

    def cost(allocation):
        return sum(weights[g.id.rstrip("0123456789")] * (g.size - allocation.get(g.id, 0)) for g in groups)

    for keep in (0.45, 0.6, 0.73):
        result = allocate_budget(Uniform(round_to=8), groups, scores, Budget(target="params", keep_fraction=keep),
                                 cost=cost)
        assert result.relative_error <= 0.02, (keep, result)
        for prefix in weights:
            assert len({result.allocation[g.id] for g in groups if g.id.startswith(prefix)}) == 1, (keep, prefix)


def test_cost_rank_prunes_units_that_cost_more_first():
    """Alike scores, one group costs four times as much per unit: under a cost budget cost_rank takes more of it
    and reaches the same cost with fewer units removed than a plain global ranking."""
    groups = [group("cheap", 32), group("dear", 32)]
    scores = seeded_scores(groups, seed=5)
    per_unit = {"cheap": 1.0, "dear": 4.0}

    def cost(allocation):
        return sum(per_unit[g.id] * (g.size - allocation.get(g.id, 0)) for g in groups)

    budget = Budget(target="params", keep_fraction=0.7)
    ranked = allocate_budget(ALLOCATORS.get("cost_rank")(), groups, scores, budget, cost=cost)
    plain = allocate_budget(GlobalRank(), groups, scores, budget, cost=cost)
    assert ranked.relative_error <= 0.02 and plain.relative_error <= 0.02
    assert ranked.allocation["dear"] > ranked.allocation["cheap"]
    # fewer units go for the same cost saving
    assert sum(ranked.allocation.values()) < sum(plain.allocation.values())
