"""PlanConfig: one validated, serialisable config; each refused config names its key; it is recorded in plan.json."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import prunekit
from prunekit.config import apply_overrides, from_dict, load_config
from prunekit.errors import ConfigError
from prunekit.graph.types import Budget
from prunekit.planning import PlanConfig


def small_cnn(width: int = 16) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
                         nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, 10)).eval()


FULL = {"criterion": {"name": "l2", "normalizer": "mean"},
        "allocator": {"name": "scoped", "by": ["scale"], "ratios": {"8": 1.5}, "relative": True},
        "budget": {"target": "macs", "keep_fraction": 0.6}, "constraints": {"round_to": 4, "max_ratio": 0.9},
        "tolerance": 0.01, "ignore": ["fc"], "calibration": {"data": "digits", "batches": 2}}


# ---------------------------------------------------------------------------------------------- refused configs
@pytest.mark.parametrize("data, key", [
    ({"allocater": {"name": "global"}}, "allocater"),                           # unknown top-level key
    ({"budget": {"keep": 0.5}}, "budget.keep"),                                 # unknown nested key
    ({"allocator": {"name": "scoped", "byy": "scale"}}, "allocator.byy"),     # unknown plugin option
    ({"criterion": {"name": "l1", "reduce": "sum"}}, "criterion.reduce"),
])
def test_unknown_key_is_refused_by_name(data, key):
    with pytest.raises(ConfigError, match=rf"'?{key}'?"):
        PlanConfig.from_dict(data)


@pytest.mark.parametrize("data, key", [
    ({"budget": {"target": "macs", "keep_fraction": "half"}}, "budget.keep_fraction"),
    ({"tolerance": [0.1]}, "tolerance"),
    ({"allow_inexact": "maybe"}, "allow_inexact"),
    ({"calibration": {"batches": 2.5}}, "calibration.batches"),
    ({"calibration": 3}, "calibration"),
    ({"allocator": {"name": "global", "per_unit": {"a": 1}}}, "allocator.per_unit"),
    ({"criterion": {"name": 7}}, "criterion.name"),
])
def test_wrong_type_is_refused_by_name(data, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        PlanConfig.from_dict(data)


@pytest.mark.parametrize("budget", [{"ratio": 0.0}, {"ratio": 1.0}, {"target": "macs", "keep_fraction": 1.5},
                                    {"target": "latency", "keep_fraction": 0.0}])
def test_budget_outside_the_open_unit_interval_is_refused(budget):
    with pytest.raises(ConfigError, match=r"budget\.(ratio|keep_fraction) must lie in \(0, 1\)"):
        PlanConfig.from_dict({"budget": budget})
    with pytest.raises(ConfigError, match=r"must lie in \(0, 1\)"):
        Budget(**budget)


def test_criterion_that_needs_data_without_data_is_refused():
    model, x = small_cnn(), torch.randn(2, 3, 8, 8)
    config = PlanConfig.from_dict({"criterion": "taylor"})
    with pytest.raises(ConfigError, match=r"criterion\.name.*'taylor' needs \['grads'\]"):
        config.check_calibration(has_batches=False)
    with pytest.raises(ConfigError, match="taylor"):
        prunekit.plan(model, x, config)
    config.check_calibration(has_batches=True)  # with data it is fine
    # activations alone fall back to the example inputs: accepted
    assert prunekit.plan(model, x, {"criterion": "activation", "budget": {"ratio": 0.25}}).removed


def test_misplaced_constraint_and_unknown_plugin_are_refused():
    with pytest.raises(ConfigError, match=r"allocator\.max_ratio.*constraints"):
        PlanConfig.from_dict({"allocator": {"name": "uniform", "max_ratio": 0.5}})
    with pytest.raises(ConfigError, match=r"criterion\.name.*unknown criterion 'l3'.*Known criteria"):
        PlanConfig.from_dict({"criterion": "l3"})
    with pytest.raises(ConfigError, match="round_to"):
        PlanConfig.from_dict({"constraints": {"round_to": "sometimes"}})
    with pytest.raises(ConfigError, match=r"budget\.runtime"):
        PlanConfig.from_dict({"budget": {"target": "latency", "runtime": "tensorrt"}})


# --------------------------------------------------------------------------------------- reading and writing
@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_round_trip_through_files(tmp_path, suffix):
    config = PlanConfig.from_dict(FULL)
    path = config.save(tmp_path / f"plan{suffix}")
    again = PlanConfig.load(path)
    assert again.to_dict() == config.to_dict()
    assert again.allocator.options == {"by": ["scale"], "ratios": {"8": 1.5}, "relative": True}
    assert again.constraints.round_to == 4 and again.effective_budget().ignore == ("fc",)
    # the same keys under a "plan:" section (as in a prune config) read the same
    (tmp_path / "nested.yaml").write_text("plan:\n  allocator: {name: global}\n  budget: {ratio: 0.3}\n")
    nested = PlanConfig.load(tmp_path / "nested.yaml")
    assert nested.allocator.name == "global" and nested.budget.ratio == 0.3


def test_file_with_a_bad_key_names_it(tmp_path):
    (tmp_path / "bad.yaml").write_text("budget:\n  target: macs\n  keep_fraction: 0.5\n  runtme: eager\n")
    with pytest.raises(ConfigError, match=r"budget\.runtme"):
        PlanConfig.load(tmp_path / "bad.yaml")


def test_set_style_overrides_reach_nested_plugin_options():
    data = apply_overrides({}, ["allocator.name=scoped", "allocator.by=scale", "budget.target=latency",
                                "budget.runtime=onnxruntime", "constraints.round_to=auto"])
    config = PlanConfig.from_dict(data)
    assert config.allocator.options == {"by": ["scale"]} and config.budget.runtime == "onnxruntime"
    assert config.constraints.round_to == "auto"


def test_plan_json_records_the_whole_config(tmp_path):
    model, x = small_cnn(), torch.randn(2, 3, 8, 8)
    config = PlanConfig.from_dict({"criterion": {"name": "l2", "normalizer": "mean"}, "allocator": "global",
                                   "budget": {"target": "params", "keep_fraction": 0.6}, "ignore": ["8"]})
    plan = prunekit.plan(model, x, config)
    plan.save(tmp_path / "plan.json")
    recorded = json.loads((tmp_path / "plan.json").read_text())["provenance"]["plan_config"]
    assert recorded == json.loads(json.dumps(config.to_dict()))
    assert PlanConfig.from_dict(recorded).to_dict() == config.to_dict()  # a plan says exactly how it was made


# ------------------------------------------------------------------------------- nested config holes (issue 24)
def test_setting_a_section_to_a_value_is_refused_at_validation():
    from prunekit.methods.gcp import GCPConfig

    with pytest.raises(ConfigError, match=r"'stage1' is a section.*stage1\.\w+="):
        load_config(GCPConfig, overrides=["stage1=3"])
    with pytest.raises(ConfigError, match=r"'seed' is a value.*no key 'x'"):
        load_config(GCPConfig, overrides=["seed=0", "seed.x=3"])
    with pytest.raises(ConfigError, match=r"config key 'seed': expected int"):
        load_config(GCPConfig, overrides=["seed.x=3"])
    with pytest.raises(ConfigError, match=r"stage1\.epochs': expected int, got float 2\.5"):
        from_dict(GCPConfig, {"stage1": {"epochs": 2.5}})
