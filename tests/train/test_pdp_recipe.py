"""The pdp recipe end to end on the scikit-learn digits (digits_cnn): stored masks, resume-safe stages, channels."""
from pathlib import Path

import pytest
import torch

from prunekit.errors import ConfigError
from prunekit.methods import RECIPES
from prunekit.methods.base import load_stage_model
from prunekit.methods.pdp import PDPRecipe
from prunekit.methods.task import ClassificationTask, TaskConfig
from prunekit.train.pdp import MaskSet

torch.set_num_threads(1)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TASK = {"model": "digits_cnn", "dataset": "digits", "pretrained": False, "augment": None, "train_subset": 256,
        "test_limit": 160, "batch_size": 32, "latency_repeats": 2, "eval_original": False, "num_threads": 1}


def config(out, **stage1):
    return {"out_dir": str(out), "task": dict(TASK),
            "stage1": {"epochs": 3, "lr": 0.1, "warmup_epochs": 0.5, "ramp_epochs": 1.5, **stage1},
            "stage2": {"epochs": 1, "lr": 0.02}}


def test_pdp_recipe_stores_verified_nm_masks(tmp_path):
    assert RECIPES.get("pdp") is PDPRecipe
    result = PDPRecipe(config(tmp_path, pattern="2:4")).run()
    assert result["status"] == "complete" and set(result["stages"]) == {"sparsify", "finetune"}
    finetune = result["stages"]["finetune"]
    assert finetune["masks_verified"] and finetune["sparse_macs"] < finetune["dense_macs"]
    assert result["accuracy"] > 0.3  # chance is 0.1; 3 epochs on 256 images land at 0.7-0.8, not bit-reproducibly
    task = ClassificationTask(TaskConfig(**TASK))
    model = load_stage_model(Path(result["model_dir"]), task)
    masks = MaskSet.load(result["model_dir"])
    report = masks.verify(model)
    assert report["passed"] and report["nm_entries"] == len(masks.entries) >= 2
    assert result["stages"]["sparsify"]["steps"] == 3 * 8 and 0 <= result["stages"]["sparsify"]["undecided"] <= 1


def test_pdp_recipe_channel_pattern_shrinks_the_model(tmp_path):
    result = PDPRecipe(config(tmp_path, pattern="channel", sparsity=0.5)).run()
    assert result["stages"]["sparsify"]["verified"] and result["params_keep"] < 0.7
    assert (Path(result["model_dir"]) / "plan.json").exists()


def test_pdp_recipe_config_errors_and_example():
    recipe = PDPRecipe.from_file(str(EXAMPLES / "pdp_cifar_resnet56.yaml"), ['stage1.pattern="2:4"'])
    assert recipe.config.stage1.sparsity_config().kind == "nm"
    with pytest.raises(ConfigError, match="quote"):
        PDPRecipe.from_file(str(EXAMPLES / "pdp_cifar_resnet56.yaml"), ["stage1.pattern=2:4"])
    with pytest.raises(ConfigError, match="must fit"):
        PDPRecipe.from_file(None, ["stage1.epochs=2", "stage1.ramp_epochs=4"])
    with pytest.raises(ConfigError, match="method"):
        PDPRecipe.from_file(None, ["stage1.method=lottery"])
