"""Per-group sensitivity curves (prunekit.planning.sensitivity), their cache, the `sensitivity` criterion and
`prunekit analyze --sensitivity`, on a digits CNN trained here for a few seconds."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import prunekit
from prunekit.errors import ConfigError
from prunekit.graph.types import Allocation
from prunekit.models import build, example_inputs
from prunekit.planning.config import PlanConfig
from prunekit.planning.sensitivity import SensitivityConfig, SensitivityCurves, evaluate, measure, model_key
from prunekit.planning.steps import make_plan


@pytest.fixture(scope="module")
def trained():
    """(digits_cnn trained to well above chance, held-out batches [(images [64, 1, 8, 8], labels [64])] x 2)."""
    from prunekit.data import DATASETS

    torch.manual_seed(0)
    data = DATASETS.get("digits")
    train = data(split="train")
    x = torch.stack([torch.as_tensor(train[i][0]) for i in range(len(train))])
    y = torch.as_tensor([int(train[i][1]) for i in range(len(train))])
    model = build("digits_cnn", pretrained=False)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(3):
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    test = data(split="test")
    tx = torch.stack([torch.as_tensor(test[i][0]) for i in range(128)])
    ty = torch.as_tensor([int(test[i][1]) for i in range(128)])
    return model, [(tx[:64], ty[:64]), (tx[64:], ty[64:])]


def _loss(out, batch):
    return F.cross_entropy(out, batch[1])


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "sensitivity"


def test_curves_equal_the_pruned_model_and_are_cached(trained, cache):
    model, held_out = trained
    x = example_inputs("digits_cnn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    curves = measure(model, x, held_out, _loss, SensitivityConfig(ratios=(0.25, 0.5, 0.75)),
                     data={"dataset": "digits", "n": 128}, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is not touched
    assert curves.baseline["accuracy"] > 0.8
    assert set(curves.groups) == {"conv1", "conv2", "conv3"} and "fc" in curves.skipped
    for gid, g in curves.groups.items():
        assert g["removed"] == [int(0.25 * g["size"]), int(0.5 * g["size"]), int(0.75 * g["size"])]
        assert curves.damage(gid)[-1] > curves.damage(gid)[1] - 1e-3  # removing more hurts (at least not less)
    # the independent check: really prune conv2's first units and evaluate the smaller model
    an = prunekit.analyze(model, x)
    g = curves.groups["conv2"]
    removed = {"conv2": torch.tensor(sorted(g["order"][:g["removed"][1]]))}
    plan = make_plan(model, an, removed, Allocation({"conv2": len(removed["conv2"])}), PlanConfig(), x)
    pruned = prunekit.apply(model, plan, x, analysis=an)
    assert pruned.conv2.out_channels == 64 - g["removed"][1]
    real = evaluate(pruned, held_out, _loss)
    assert real["loss"] == pytest.approx(g["loss"][1], rel=1e-5, abs=1e-6)
    assert real["accuracy"] == pytest.approx(g["accuracy"][1])
    # cached: the same request reads the file; other ratios or other weights are another key
    files = list(cache.glob("*.json"))
    assert len(files) == 1 and files[0].stem == curves.key and files[0].stem.startswith(model_key(model))
    again = measure(model, x, held_out, _loss, SensitivityConfig(ratios=(0.25, 0.5, 0.75)),
                    data={"dataset": "digits", "n": 128}, progress=False)
    assert again.groups == curves.groups
    other = SensitivityConfig(ratios=(0.5,))
    from prunekit.planning.sensitivity import cache_key

    assert cache_key(curves.model_key, curves.data, other) != curves.key
    with pytest.raises(ConfigError, match="increasing"):
        SensitivityConfig(ratios=(0.5, 0.25))
    (cache / "bad.json").write_text(json.dumps({"format": "prunekit-sensitivity", "key": 1}))
    with pytest.raises(ConfigError, match="missing keys"):
        SensitivityCurves.load(cache / "bad.json")


def test_unit_scores_interpolate_the_damage_curve():
    from prunekit.importance.sensitivity import unit_scores

    s = unit_scores([0.0, 1.0, 2.0, 3.0], [0.25, 0.5, 0.75], order=[3, 2, 1, 0])
    # unit 3 goes first (fraction 1/4 -> damage 1), unit 0 last (fraction 1 -> extrapolated 4)
    assert s.tolist() == pytest.approx([4.0, 3.0, 2.0, 1.0], abs=1e-4)
    noisy = unit_scores([0.0, 0.5, 0.2, 0.9], [0.25, 0.5, 0.75], order=[0, 1, 2, 3])
    assert bool((noisy[1:] > noisy[:-1]).all())  # made non-decreasing, strictly by rank


def test_sensitivity_criterion_allocates_by_measured_damage(trained, cache):
    model, held_out = trained
    x = example_inputs("digits_cnn")
    with pytest.raises(ConfigError, match="prunekit analyze"):
        prunekit.plan(model, x, ratio=0.4, criterion="sensitivity", allocator="global")
    curves = measure(model, x, held_out, _loss, SensitivityConfig(ratios=(0.2, 0.4, 0.6, 0.8)),
                     data={"dataset": "digits", "n": 128}, progress=False)
    plan = prunekit.plan(model, x, ratio=0.4, criterion="sensitivity", allocator="global")
    share = {gid: len(plan.removed.get(gid, [])) / g["size"] for gid, g in curves.groups.items()}
    damage = {gid: curves.damage(gid)[2] for gid in curves.groups}  # at 0.4
    robust, fragile = min(damage, key=damage.get), max(damage, key=damage.get)
    assert share[robust] >= share[fragile] and share[robust] > 0.4  # the robust group gives more than its share
    for gid, units in plan.removed.items():  # inside a group, units go in the measured order
        assert sorted(units) == sorted(curves.groups[gid]["order"][:len(units)])
    total = sum(len(u) for u in plan.removed.values())
    assert total == int(0.4 * sum(g["size"] for g in curves.groups.values()))
    # an explicit curves file works the same; a file of another architecture is refused
    path = curves.save(cache.parent / "curves.json")
    again = prunekit.plan(model, x, ratio=0.4, criterion="sensitivity", criterion_options={"curves": str(path)},
                          allocator="global")
    assert again.removed == plan.removed
    data = json.loads(path.read_text())
    data["fingerprint"] = "0" * 16
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="another architecture"):
        prunekit.plan(model, x, ratio=0.4, criterion="sensitivity", criterion_options={"curves": str(path)})


def test_analyze_command_lists_groups_and_measures_curves(cache, tmp_path, capsys):
    from prunekit.cli.main import main

    assert main(["analyze", "--model", "digits_cnn"]) == 0
    assert "conv2" in capsys.readouterr().out
    out = tmp_path / "curves.json"
    assert main(["analyze", "--model", "digits_cnn", "--sensitivity", "--batches", "1", "--batch-size", "32",
                 "--ratios", "0.5", "--json", str(out)]) == 0
    curves = SensitivityCurves.load(out)
    assert curves.ratios == [0.5] and curves.data["dataset"] == "digits" and set(curves.groups) == {
        "conv1", "conv2", "conv3"}
    assert len(list(cache.glob("*.json"))) == 1
    assert main(["analyze", "--model", "digits_cnn", "--sensitivity", "--ratios", "0.5,1.5"]) == 1
    assert "sensitivity ratios must each lie in (0, 1)" in capsys.readouterr().err
