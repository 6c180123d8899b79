"""The `pagcp` recipe end to end on tiny settings: two rounds on the two-head ResNet-20, a resumed rerun, a refused
change of settings, the composed plan reloading, and single-task PAGCP on a plain classifier."""
from __future__ import annotations

import json

import pytest

import prunekit
from prunekit.errors import ConfigError, StageSettingsChanged
from prunekit.methods import RECIPES
from prunekit.methods.pagcp import LOG_FILE, PLOT_FILE

TINY = ["task.train_subset=128", "task.test_limit=64", "task.batch_size=16", "task.eval_batch_size=64",
        "task.latency_repeats=2", "task.num_threads=1", "prune.ratio_steps=3", "prune.held_out_images=32",
        "prune.held_out_batch=32", "prune.progress=false", "finetune.steps=2", "task.eval_original=false"]


def test_pagcp_rounds_prune_log_resume_and_refuse(tmp_path):
    cls = RECIPES.get("pagcp")
    args = TINY + [f"out_dir={tmp_path}", "task.model=cifar_resnet20_multihead", "rounds.count=2",
                   "prune.keep_macs=0.6", "prune.allowance=3.0"]
    result = cls.from_file(None, args).run()
    assert result["status"] == "complete"
    assert list(result["stages"]) == ["prune1", "finetune1", "prune2", "finetune2"]
    assert result["macs_keep"] < 1.0 and result["params_keep"] < 1.0  # the model shrank
    first, second = result["stages"]["prune1"], result["stages"]["prune2"]
    assert first["channels_removed"] > 0
    assert second["macs"] <= first["macs"]  # round 2 prunes the fine-tuned round-1 model further (or keeps it)
    for stage in (first, second):
        log = stage["pagcp_log"]
        assert log["swept"] and log["tasks"] == ["class", "vehicle"]  # both heads watched by default
        assert all(r["stopped_by"] in (None, "class", "vehicle") for r in log["units"])
        # right after pruning every task's held-out loss is within the allowance of the sweep
        assert all(ratio <= 3.0 * (1 + 1e-4) for ratio in stage["loss_ratio"].values())
    saved = json.loads((tmp_path / "1_prune1" / LOG_FILE).read_text())
    assert saved["units"] == first["pagcp_log"]["units"]
    assert (tmp_path / "1_prune1" / PLOT_FILE).read_bytes()[:4] == b"\x89PNG"  # ratio and binding task per unit
    assert 0 <= result["accuracy_class"] <= 1 and 0 <= result["accuracy_vehicle"] <= 1
    # the composed two-round plan rebuilds the final model from the original architecture
    final = prunekit.load(result["model_dir"])
    assert sum(p.numel() for p in final.parameters()) == result["params"]
    # a rerun resumes every finished stage, and changed sweep settings are refused by name
    again = cls.from_file(None, args).run()
    assert {k: v["seconds"] for k, v in again["stages"].items()} == {k: v["seconds"]
                                                                       for k, v in result["stages"].items()}
    with pytest.raises(StageSettingsChanged, match="prune.tolerance"):
        cls.from_file(None, args + ["prune.tolerance=0.1"]).run()


def test_pagcp_single_task_on_plain_classifier(tmp_path):
    cls = RECIPES.get("pagcp")
    result = cls.from_file(None, TINY + [f"out_dir={tmp_path}", "task.model=cifar_resnet20", "rounds.count=1",
                                         "prune.keep_macs=null"]).run()
    log = result["stages"]["prune1"]["pagcp_log"]
    assert log["tasks"] == ["class"] and result["macs_keep"] < 1.0
    assert "accuracy_vehicle" not in result and 0 <= result["accuracy"] <= 1
    # the oracle's held-out images (the test split's tail) may not overlap the evaluated ones
    with pytest.raises(ConfigError, match="held_out_images"):
        cls.from_file(None, TINY + [f"out_dir={tmp_path / 'overlap'}", "task.model=cifar_resnet20",
                                    "rounds.count=1", "task.test_limit=9990"]).run()
