"""The `precrop` recipe on the scikit-learn digits: crop at init, train from scratch, reload, resume, from_config."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prunekit.errors import ConfigError
from prunekit.methods import RECIPES
from prunekit.methods.base import load_stage_model
from prunekit.methods.task import ClassificationTask, TaskConfig
from prunekit.widths import WidthConfig

torch.set_num_threads(1)

TASK = {"model": "digits_cnn", "dataset": "digits", "pretrained": False, "augment": None, "train_subset": 320,
        "test_limit": 160, "batch_size": 32, "latency_repeats": 3, "eval_original": False, "num_threads": 1}


def config(out, crop=None, **train):
    return {"out_dir": str(out), "task": dict(TASK),
            "crop": {"density": "synexp", "keep_params": 0.4, **(crop or {})},
            "train": {"epochs": 2, "lr": 0.05, **train}}


def test_precrop_recipe_crops_trains_reloads_and_resumes(tmp_path):
    recipe = RECIPES.get("precrop")
    straight = recipe(config(tmp_path / "a")).run()
    assert straight["status"] == "complete" and set(straight["stages"]) == {"crop", "train"}
    crop = straight["stages"]["crop"]
    assert abs(crop["params_match_error"]) < 0.05 and straight["params_keep"] < 0.5
    assert straight["stages"]["train"]["steps"] == 20 and straight["stages"]["train"]["logit_weight"] == 0.0
    model = load_stage_model(Path(straight["model_dir"]), ClassificationTask(TaskConfig(**TASK)))
    assert [model.conv1.out_channels, model.conv2.out_channels, model.conv3.out_channels] == \
        [crop["kept"]["conv1"], crop["kept"]["conv2"], crop["kept"]["conv3"]]
    # the crop folder is a width config in the plan format
    saved = WidthConfig.load(tmp_path / "a" / "1_crop" / "model")
    assert saved.kept == crop["kept"] and saved.provenance["density"] == "synexp"
    # stopped inside training, then resumed: the same network
    first = recipe(config(tmp_path / "b", max_steps=7)).run()
    assert first["status"] == "incomplete" and first["stopped_in"] == "train"
    resumed = recipe(config(tmp_path / "b")).run()
    assert resumed["stages"]["train"]["resumed_from"].endswith("step-00000007")
    assert resumed["accuracy"] == pytest.approx(straight["accuracy"], abs=1e-9)
    # a saved width config trained from scratch by the same recipe: same widths, same init, same result
    saved.save(tmp_path / "widths.yaml")
    again = recipe(config(tmp_path / "c", crop={"from_config": str(tmp_path / "widths.yaml")})).run()
    assert again["stages"]["crop"]["kept"] == crop["kept"]
    assert again["accuracy"] == pytest.approx(straight["accuracy"], abs=1e-9)


def test_precrop_recipe_config_is_checked_by_name(tmp_path):
    recipe = RECIPES.get("precrop")
    with pytest.raises(ConfigError, match="crop: density must be"):
        recipe({"crop": {"density": "nope"}})
    with pytest.raises(ConfigError, match="crop: from_config .* does not exist"):
        recipe({"crop": {"from_config": str(tmp_path / "missing.yaml")}})
    with pytest.raises(ConfigError, match="KD needs a trained teacher"):
        recipe({"train": {"distill": {"feature_loss": "none", "logit_weight": 9.0, "teacher": "original"}}})
    with pytest.raises(ConfigError, match="crop.no_such_key"):
        recipe.from_file(None, ["crop.no_such_key=1"])
