"""PAGCP allocator: the multitask oracle, the last-safe-ratio commit, the tolerance decay, the provenance log."""
import json
import math

import pytest
import torch
from torch import nn

import prunekit
from prunekit import planning
from prunekit.allocate import ALLOCATORS
from prunekit.allocate.pagcp import Pagcp
from prunekit.allocate.pagcp_sweep import solve_decay
from prunekit.errors import ConfigError
from prunekit.graph.types import Budget
from prunekit.planning.cost import macs_cost

torch.set_num_threads(1)


class TwoHead(nn.Module):
    """x [B, 8] -> hidden [B, 16] -> (a [B, 1], b [B, 1]); hidden 0-7 feed head a only, 8-13 head b only."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.trunk = nn.Linear(8, 16)
        self.a = nn.Linear(16, 1)
        self.b = nn.Linear(16, 1)
        with torch.no_grad():
            w = torch.randn(16, 8, generator=gen)
            w[8:] *= 0.1  # b's channels have the smallest weights: plain L1 removes them first
            self.trunk.weight.copy_(w)
            self.trunk.bias.fill_(0.5)
            self.a.weight.zero_()
            self.b.weight.zero_()
            self.a.weight[0, :8] = torch.rand(8, generator=gen) + 0.5
            self.b.weight[0, 8:] = torch.rand(8, generator=gen) + 0.5
            self.b.weight[0, 14:] = 0.0  # hidden 14-15 feed no head and are the weakest: safe for every task
            self.trunk.weight[14:] *= 0.1

    def forward(self, x):
        h = torch.relu(self.trunk(x))
        return self.a(h), self.b(h)


def batches_for(model, n=3, size=64, noise=0.1):
    """Held-out batches (x, target_a, target_b): the model's own outputs plus noise (so base losses are > 0)."""
    gen = torch.Generator().manual_seed(1)
    out = []
    with torch.no_grad():
        for _ in range(n):
            x = torch.randn(size, 8, generator=gen)
            a, b = model(x)
            out.append((x, a + noise * torch.randn(a.shape, generator=gen),
                        b + noise * torch.randn(b.shape, generator=gen)))
    return out


def loss_a(out, batch):
    return 1e6 * torch.mean((out[0] - batch[1]) ** 2)  # a task whose loss is on a much larger scale


def loss_b(out, batch):
    return torch.mean((out[1] - batch[2]) ** 2)


def run_pagcp(model, tasks, batches, **options):
    inputs = batches[0][0]
    analysis = planning.analyse(model, inputs)
    config = planning.PlanConfig(allocator={"name": "pagcp", "progress": False, **options},
                                 budget=Budget(ratio=0.999))
    groups = planning.eligibility(analysis, config)
    scores = planning.scoring(model, groups, config, inputs)
    policy = Pagcp(progress=False, **options).attach(model, tasks, batches, cost=macs_cost(model, groups, inputs))
    allocation = planning.allocate(model, groups, scores, config, inputs, policy=policy)
    removed = planning.selection(groups, policy.sweep_scores(scores), allocation)
    plan = planning.make_plan(model, analysis, removed, allocation, config, inputs, pagcp=policy.provenance())
    return plan, policy


def task_losses(model, batches):
    with torch.no_grad():
        outs = [(model(b[0]), b) for b in batches]
    return {name: sum(float(fn(o, b)) for o, b in outs) / len(outs)
            for name, fn in (("a", loss_a), ("b", loss_b))}


def test_multitask_oracle_keeps_every_task_within_tolerance_where_a_summed_loss_does_not():
    model = TwoHead().eval()
    batches = batches_for(model)
    base = task_losses(model, batches)
    hidden = "trunk"

    summed = lambda out, batch: loss_a(out, batch) + loss_b(out, batch)  # noqa: E731
    plan_sum, _ = run_pagcp(model, {"sum": summed}, batches, tolerance=0.05, allowance=1.1)
    plan_multi, policy = run_pagcp(model, {"a": loss_a, "b": loss_b}, batches, tolerance=0.05, allowance=1.1)

    pruned_sum = prunekit.apply(model, plan_sum, batches[0][0])
    pruned_multi = prunekit.apply(model, plan_multi, batches[0][0])
    after_sum, after_multi = task_losses(pruned_sum, batches), task_losses(pruned_multi, batches)
    # the summed oracle does not see head b: it removes b's channels and b's loss explodes
    assert len(plan_sum.removed[hidden]) >= 6
    assert sum(1 for i in plan_sum.removed[hidden] if i >= 8) >= 6
    assert after_sum["b"] > 3 * base["b"]
    # the multitask oracle stops where b notices: every task within the allowance on the held-out batches
    for task in ("a", "b"):
        assert after_multi[task] <= 1.1 * base[task] * (1 + 1e-4), (task, after_multi, base)
    assert plan_multi.removed[hidden] == [14, 15]  # only the channels no head uses
    record = policy.result.records[0]
    assert record.stopped_by == "b"  # head b bound this unit
    # the sweep's masked losses equal the physically pruned model's (masking = removal)
    for task in ("a", "b"):
        assert math.isclose(policy.result.final_losses[task], after_multi[task], rel_tol=1e-4)


class Deep(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.l1, self.l2, self.out = nn.Linear(8, 16), nn.Linear(16, 12), nn.Linear(12, 2)

    def forward(self, x):
        y = self.out(torch.relu(self.l2(torch.relu(self.l1(x)))))
        return y[:, :1], y[:, 1:]


def test_unit_that_never_violates_commits_its_last_safe_ratio_and_later_units_see_it():
    model = Deep().eval()
    batches = batches_for(model, n=2)
    # a tolerance no loss reaches: every unit runs to the end of the grid and keeps that ratio
    plan, policy = run_pagcp(model, {"a": loss_a, "b": loss_b}, batches, tolerance=1e6, allowance=1e7,
                             ratio_steps=10)
    records = {r.group: r for r in policy.result.records}
    assert set(records) == {"l1", "l2"}
    for gid, size in (("l1", 16), ("l2", 12)):
        assert records[gid].stopped_by is None
        assert records[gid].removed == math.floor(0.95 * size)  # grid end, never all
        assert len(plan.removed[gid]) == records[gid].removed  # committed, not dropped (the reference code's bug)
    pruned = prunekit.apply(model, plan, batches[0][0])
    final = task_losses(pruned, batches)
    for task in ("a", "b"):  # the last unit was evaluated on the model with the first one already pruned
        assert math.isclose(policy.result.final_losses[task], final[task], rel_tol=1e-4)


def test_tolerance_decay_solves_the_product_condition():
    for delta0, allowance, n in ((0.05, 5.0, 20), (0.06, 6.0, 57), (0.1, 1.5, 8), (0.01, 2.0, 10)):
        lam = solve_decay(delta0, allowance, n)
        product = math.prod(1 + delta0 * lam ** i for i in range(n))
        assert math.isclose(product, allowance, rel_tol=1e-9), (delta0, allowance, n, lam)
    assert solve_decay(0.05, 1.05 ** 10, 10) == pytest.approx(1.0, rel=1e-9)
    assert solve_decay(0.05, 1.2, 10) < 1.0 < solve_decay(0.05, 3.0, 10)
    with pytest.raises(ConfigError, match="allowance"):
        solve_decay(0.05, 1.01, 10)
    with pytest.raises(ConfigError, match="allowance"):
        Pagcp(tolerance=0.1, allowance=1.05)


def test_sweep_log_goes_into_the_plan_provenance_and_tolerances_decay():
    model = Deep().eval()
    batches = batches_for(model, n=2)
    plan, policy = run_pagcp(model, {"a": loss_a, "b": loss_b}, batches, tolerance=0.05, allowance=1.3,
                             ratio_steps=10)
    log = json.loads(plan.to_json())["provenance"]["pagcp"]
    assert log["swept"] and log["tasks"] == ["a", "b"]
    units = log["units"]
    assert [u["group"] for u in units] == [r.group for r in policy.result.records] and len(units) == 2
    lam = log["decay"]
    assert math.isclose(math.prod(1 + u["tolerance"] for u in units), 1.3, rel_tol=1e-6)
    assert math.isclose(units[1]["tolerance"], 0.05 * lam, rel_tol=1e-9)
    for u in units:
        assert u["stopped_by"] in (None, "a", "b") and u["seconds"] >= 0 and u["evaluations"] >= 1
        assert all(v <= 1 + u["tolerance"] + 1e-9 for v in u["loss_ratios"].values())
    for task in ("a", "b"):  # the product of per-unit tolerances bounds the final loss
        assert log["final_losses"][task] <= 1.3 * log["base_losses"][task] * (1 + 1e-6)


def test_registered_and_budget_search_never_exceeds_what_the_oracle_passed():
    assert "pagcp" in ALLOCATORS.names()
    model = Deep().eval()
    batches = batches_for(model, n=2)
    inputs = batches[0][0]
    analysis = planning.analyse(model, inputs)
    config = planning.PlanConfig(allocator={"name": "pagcp", "progress": False, "allowance": 3.0},
                                 budget=Budget(target="params", keep_fraction=0.8))
    groups = planning.eligibility(analysis, config)
    scores = planning.scoring(model, groups, config, inputs)
    policy = Pagcp(progress=False, allowance=3.0).attach(model, {"a": loss_a, "b": loss_b}, batches)
    allocation = planning.allocate(model, groups, scores, config, inputs, policy=policy)
    passed = {r.group: r.removed for r in policy.result.records}
    assert allocation.cost <= allocation.base_cost * 0.8 * 1.02
    assert all(allocation[g] <= passed.get(g, 0) for g in allocation)


def test_multihead_cifar_model_shares_the_pretrained_trunk_and_its_heads_are_tasks():
    from prunekit.models import build
    from prunekit.models.cifar_multihead import class_loss, coarse_loss, two_task_batch

    torch.manual_seed(0)
    two, one = build("cifar_resnet20_multihead").eval(), build("cifar_resnet20").eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        logits, coarse = two(x)
        assert torch.allclose(logits, one(x), atol=1e-5)  # the class head is the pretrained ResNet-20
    assert coarse.shape == (4, 2)
    images, labels, vehicle = two_task_batch(x, torch.tensor([0, 3, 8, 5]))
    assert vehicle.tolist() == [1, 0, 1, 0]  # airplane, cat, ship, dog
    with torch.no_grad():
        out = two(images)
    batch = (images, labels, vehicle)
    assert float(class_loss(out, batch)) > 0 and float(coarse_loss(out, batch)) > 0
