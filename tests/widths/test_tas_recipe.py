"""The `tas` recipe on the scikit-learn digits: search then KD training, the derived widths reloaded, resume."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from prunekit.errors import ConfigError
from prunekit.methods import RECIPES
from prunekit.methods.base import load_stage_model
from prunekit.methods.task import ClassificationTask, TaskConfig

torch.set_num_threads(1)

TASK = {"model": "digits_cnn", "dataset": "digits", "pretrained": False, "augment": None, "train_subset": 400,
        "test_limit": 160, "batch_size": 32, "latency_repeats": 3, "eval_original": False, "num_threads": 1}


def config(out, **search):
    return {"out_dir": str(out), "task": dict(TASK),
            "search": {"epochs": 2, "batch_size": 25, "arch_lr": 0.3, "tolerance": 0.05, "log_every": 1, **search},
            "train": {"epochs": 2, "lr": 0.05, "bn_recalibrate": 64}}


def test_tas_recipe_searches_builds_and_trains_the_derived_network(tmp_path):
    recipe = RECIPES.get("tas")
    straight = recipe(config(tmp_path / "a")).run()
    assert straight["status"] == "complete" and set(straight["stages"]) == {"search", "train"}
    search = straight["stages"]["search"]
    assert 0.45 <= straight["macs_keep"] <= 0.5 and search["argmax_keep"] == pytest.approx(straight["macs_keep"])
    assert search["history"] and set(search["widths"]) == set(search["searched_groups"])
    train = straight["stages"]["train"]
    assert train["logit_weight"] == 9.0 and train["feature_loss"] == "none" and train["steps"] == 26
    model = load_stage_model(Path(straight["model_dir"]), ClassificationTask(TaskConfig(**TASK)))
    assert [model.conv1.out_channels, model.conv2.out_channels] == [search["widths"]["conv1"],
                                                                    search["widths"]["conv2"]]
    # stopped inside the search, then resumed: the same derived widths and trained network
    first = recipe(config(tmp_path / "b", max_steps=5)).run()
    assert first["status"] == "incomplete" and first["stopped_in"] == "search"
    resumed = recipe(config(tmp_path / "b")).run()
    assert resumed["status"] == "complete"
    assert resumed["stages"]["search"]["resumed_from"].endswith("step-00000005")
    assert resumed["stages"]["search"]["widths"] == search["widths"]
    assert resumed["accuracy"] == pytest.approx(straight["accuracy"], abs=1e-9)


def test_tas_config_is_checked_by_name():
    recipe = RECIPES.get("tas")
    with pytest.raises(ConfigError, match="search: keep_macs"):
        recipe({"search": {"keep_macs": 1.5}})
    with pytest.raises(ConfigError, match="search: need 0 < tau_min"):
        recipe({"search": {"tau_min": 6.0}})
    with pytest.raises(ConfigError, match="search.no_such_key"):
        recipe.from_file(None, ["search.no_such_key=1"])
