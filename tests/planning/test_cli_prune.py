"""`prunekit prune` takes the whole PlanConfig: criterion, allocator, calibration data, budgets, --config and --set."""
from __future__ import annotations

import json

import pytest

import prunekit
from prunekit.cli.main import main


def provenance(out):
    return json.loads((out / "plan.json").read_text())["provenance"]


def test_prune_with_taylor_on_calibration_data_at_half_the_macs(tmp_path):
    """The issue's command (`--model cifar_resnet56_b --criterion taylor --data cifar10 --calibration-batches 4
    --budget macs:0.5`) on the small digits model and dataset."""
    out = tmp_path / "out"
    rc = main(["prune", "--model", "digits_cnn", "--criterion", "taylor", "--data", "digits",
               "--calibration-batches", "2", "--budget", "macs:0.5", "--out", str(out), "--latency", "false"])
    assert rc == 0
    prov = provenance(out)
    assert prov["criterion"] == "taylor" and prov["budget"] == "macs"
    config = prov["plan_config"]
    assert config["calibration"]["data"] == "digits" and config["calibration"]["batches"] == 2
    assert config["budget"] == {**config["budget"], "target": "macs", "keep_fraction": 0.5}
    report = json.loads((out / "report.json").read_text())
    kept = report["after"]["macs"] / report["before"]["macs"]
    assert abs(kept - 0.5) <= 0.02 * 0.5 + 0.01
    model = prunekit.load(out)
    assert sum(p.numel() for p in model.parameters()) == report["after"]["params"]


def test_prune_reads_a_config_file_and_nested_set_overrides(tmp_path):
    config = tmp_path / "prune.yaml"
    config.write_text("model: digits_cnn\nlatency: false\nplan:\n  criterion: {name: l2}\n"
                      "  budget: {target: params, keep_fraction: 0.6}\n")
    out = tmp_path / "out"
    rc = main(["prune", "--config", str(config), "--out", str(out), "--allocator", "scoped",
               "--set", "plan.allocator.by=scale", "--set", "plan.allocator.relative=true",
               "--set", "plan.constraints.max_ratio=0.8"])
    assert rc == 0
    plan_config = provenance(out)["plan_config"]
    assert plan_config["criterion"] == {"name": "l2"}
    assert plan_config["allocator"] == {"name": "scoped", "by": ["scale"], "relative": True}
    assert plan_config["constraints"]["max_ratio"] == 0.8 and plan_config["budget"]["target"] == "params"


@pytest.mark.parametrize("args, message", [
    (["--criterion", "taylor"], "criterion 'taylor' needs"),                       # needs data, none given
    (["--set", "plan.allocatr.name=global"], r"plan\.allocatr"),                   # unknown key
    (["--set", "plan.budget.keep_fraction=abc", "--budget", "macs:0.5"], r"plan\.budget\.keep_fraction"),
    (["--budget", "macs:1.5"], r"keep_fraction must lie in \(0, 1\)"),            # budget outside (0, 1)
    (["--ratio", "0.3", "--keep-macs", "0.5"], "are all budgets"),
    (["--budget", "flops:0.5"], r"budget\.target must be one of"),
    (["--set", "plan=3"], "'plan' is a section"),
])
def test_refused_configs_exit_1_naming_the_key_before_any_work(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main(["prune", "--model", "digits_cnn", "--out", str(out), "--latency", "false", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("prunekit prune: error:")
    import re

    assert re.search(message, err), err
    assert not out.exists()


def test_latency_budget_from_the_command_line(tmp_path, monkeypatch, synthetic_timings):
    from prunekit import paths

    monkeypatch.setenv(paths.CACHE_ENV_VAR, str(tmp_path / "cache"))
    out = tmp_path / "out"
    assert main(["prune", "--model", "digits_cnn", "--budget", "latency:0.7", "--runtime", "eager-bnfold",
                 "--allocator", "global", "--out", str(out), "--latency", "false"]) == 0
    prov = provenance(out)
    assert prov["budget"] == "latency" and prov["plan_config"]["budget"]["runtime"] == "eager-bnfold"
    assert prov["cost"] < prov["base_cost"]
    assert list((tmp_path / "cache" / "latency").glob("eager-bnfold-*.json"))
