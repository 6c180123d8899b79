"""What the API says: ignore patterns, refusal summaries, actionable refusals, reuse of the plan's analysis, strict,
inexact models verified against what removal does, and analysis that never changes the user's model."""
import logging

import pytest
import torch
from torch import nn

import prunekit
from prunekit.errors import ConfigError, UnsupportedOperationError


class Blocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.layer = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                   nn.Conv2d(16, 16, 1))
        self.mid = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        y = self.layer(torch.relu(self.stem(x))) + self.stem(x)
        return self.head(torch.relu(self.mid(y)).mean((2, 3)))


class Sorts(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c(torch.sort(self.b(torch.relu(self.a(x))), dim=1).values)


class LayerNormMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(8, 32), nn.LayerNorm(32), nn.Linear(32, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.norm(self.fc1(x))))


X = torch.randn(2, 3, 8, 8)


def test_ignore_with_or_without_budget_and_container_patterns_cover_children():
    model = Blocks().eval()
    for kwargs in ({"ratio": 0.5}, {"budget": prunekit.Budget(ratio=0.5)}):
        plan = prunekit.plan(model, X, ignore=["layer"], **kwargs)
        pruned_groups = {gid for gid, idx in plan.removed.items() if idx}
        assert pruned_groups == {"mid"}, (kwargs, pruned_groups)  # stem's group holds layer.3's outputs: ignored
        pruned = prunekit.apply(model, plan, X)
        assert pruned.layer[0].out_channels == 16  # the ignored container's own widths are kept


def test_pattern_matching_nothing_names_the_nearest_modules():
    with pytest.raises(ConfigError, match="'layr'.*nearest module names: layer"):
        prunekit.plan(Blocks().eval(), X, ratio=0.5, ignore=["layr"])


def test_refusals_are_split_into_actionable_and_structural_and_logged(caplog):
    model = Sorts().eval()
    an = prunekit.analyze(model, X)
    actionable, structural = an.refused("actionable"), an.refused("structural")
    assert [g.id for g in actionable] == ["b"] and "sort" in actionable[0].reasons[0]
    assert any("output" in g.reasons[0] for g in structural)  # c's outputs are the model's outputs
    assert {g.id for g in an.refused()} == {g.id for g in actionable + structural}
    with caplog.at_level(logging.INFO, logger="prunekit"):
        plan = prunekit.plan(model, X, ratio=0.5)
        prunekit.apply(model, plan, X)
    text = caplog.text
    assert "plan: 1 of 3 groups pruned, 2 refused (1 you can act on)" in text and "apply:" in text
    summary = an.summary(plan.removed)
    assert summary.pruned == 1 and summary.refused == 2 and 0 < summary.refused_param_share < 1


def test_apply_reuses_the_plans_analysis_and_honours_strict(monkeypatch):
    model = Blocks().eval()
    plan = prunekit.plan(model, X, ratio=0.5)

    def no_trace(*args, **kwargs):
        raise AssertionError("apply traced the model again")

    monkeypatch.setattr(prunekit.api, "analyze", no_trace)
    assert prunekit.apply(model, plan, X).prunekit_verification.passed
    monkeypatch.undo()
    sorts = Sorts().eval()
    loose = prunekit.plan(sorts, X, ratio=0.5)
    loose._analysis = None  # as if the plan came from a file
    with pytest.raises(UnsupportedOperationError, match="sort"):
        prunekit.apply(sorts, loose, X, strict=True)
    with pytest.raises(UnsupportedOperationError, match="sort"):
        prunekit.prune(sorts, X, ratio=0.5, strict=True)


def test_inexact_model_is_verified_against_norms_over_kept_channels():
    torch.manual_seed(0)
    model = LayerNormMLP().eval()
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 1.5)
        model.norm.bias.uniform_(-0.2, 0.2)
    x = torch.randn(4, 8)
    plan = prunekit.plan(model, x, ratio=0.5, allow_inexact=True)
    pruned = prunekit.apply(model, plan, x, held_out=torch.randn(3, 8))
    report = pruned.prunekit_verification
    assert report.inexact_groups == ["fc1"] and report.passed and max(report.errors) < 1e-5
    # the check is real: a pruned model that computes something else fails it
    with torch.no_grad():
        pruned.norm.bias[0] += 0.5
    assert not prunekit.verify(model, pruned, plan, x).passed


def test_analysis_and_planning_leave_a_training_model_unchanged():
    model = Blocks().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prunekit.analyze(model, prunekit.Examples([X, torch.randn(3, 3, 12, 12)]))
    prunekit.plan(model, X, ratio=0.5)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # BatchNorm running stats and num_batches_tracked included
    assert all(m.training for m in model.modules())


def test_in_place_pruning_prunes_the_model_object_and_verifies():
    model = Blocks().eval()
    plan = prunekit.plan(model, X, ratio=0.5)
    reference = Blocks().eval()
    reference.load_state_dict(model.state_dict())
    pruned = prunekit.apply(model, plan, X, inplace=True, held_out=torch.randn(1, 3, 10, 10))
    assert pruned is model and model.mid.out_channels == 8
    report = pruned.prunekit_verification
    assert report.passed and report.inputs_checked == 2 and report.peak_rss_bytes > 0
    assert prunekit.verify(reference, pruned, plan, X).passed  # against an untouched copy of the original
