"""The udfc recipe: the YAML example parses into typed sections, and a small run writes a reloadable artifact."""
import json
from pathlib import Path

from prunekit.compensate.udfc import UDFCConfig
from prunekit.methods import RECIPES
from prunekit.paths import repo_root


def test_example_yaml_parses():
    recipe = RECIPES.get("udfc").from_file(str(repo_root() / "examples" / "udfc_cifar_resnet56.yaml"))
    assert isinstance(recipe.config.compress, UDFCConfig)
    assert recipe.config.compress.keep == 0.7 and recipe.config.compress.bits == 6


def test_recipe_runs_and_measures_the_reloaded_model(tmp_path):
    recipe = RECIPES.get("udfc")({"out_dir": str(tmp_path / "run"),
                                  "task": {"model": "cifar_resnet20", "augment": None, "test_limit": 100,
                                           "latency_repeats": 3, "eval_original": False},
                                  "compress": {"keep": 0.8, "bits": 8, "prune_uncompensable": False}})
    result = recipe.run()
    assert result["status"] == "complete"
    assert result["params_keep"] < 0.95
    assert result["accuracy"] > 0.65  # the original: about 0.8 on these images; 20% of block channels, 8 bits
    saved = json.loads((Path(result["out_dir"]) / "result.json").read_text())
    assert saved["stages"]["compress"]["quantized_layers"] > 0
    assert saved["stages"]["compress"]["uncompensated_pruned_groups"] == {}
