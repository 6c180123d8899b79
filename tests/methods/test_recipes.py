"""The gcp and slim-cwd recipes end to end on the scikit-learn digits (digits_cnn), resume, configs, bias folding."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch

import prunekit
from prunekit.models import build
from prunekit.errors import ConfigError
from prunekit.methods import RECIPES
from prunekit.methods.base import PruneStageConfig, load_stage_model, prune_with_folding
from prunekit.methods.stage_folder import settings_diff
from prunekit.methods.task import ClassificationTask, TaskConfig
from prunekit.methods.gcp import GCPRecipe, assign_scopes
from prunekit.methods.slim_cwd import SlimCWDRecipe

torch.set_num_threads(1)  # tiny models: one thread avoids contention on the shared 2-core machine

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TASK = {"model": "digits_cnn", "dataset": "digits", "pretrained": False, "augment": None, "train_subset": 512,
        "test_limit": 160, "batch_size": 32, "latency_repeats": 3, "eval_original": False, "num_threads": 1}


def config(out, **sections):
    # 8x8 digit maps make attention-transfer terms far larger than on 32x32 images: weight 10, not CIFAR's 1000
    cfg = {"out_dir": str(out), "task": dict(TASK), "stage1": {"epochs": 3, "lr": 0.1, "s": 1e-3},
           "stage2": {"keep_macs": 0.5}, "stage3": {"epochs": 2, "lr": 0.05, "distill": {"weight": 10.0}}}
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return cfg


def widths(model):
    return [model.conv1.out_channels, model.conv2.out_channels, model.conv3.out_channels]


@pytest.mark.parametrize("recipe, stage2", [(GCPRecipe, {}), (SlimCWDRecipe, {})])
def test_recipe_runs_end_to_end_and_shrinks_the_model(tmp_path, recipe, stage2):
    result = recipe(config(tmp_path, stage2=stage2)).run()
    assert result["status"] == "complete" and set(result["stages"]) == {"sparse", "prune", "finetune"}
    base = result["original"]
    assert result["params"] < 0.8 * base["params"] and abs(result["macs_keep"] - 0.5) < 0.01
    assert result["accuracy"] > 0.8  # chance is 0.1
    assert result["latency_ms"] > 0
    finetune = result["stages"]["finetune"]
    assert finetune["distilled_layers"] == ["bn2", "bn3"]  # last layer of each scale
    assert finetune["bn_recalibrated"] == 3 and 0 < finetune["accuracy_before_bn_recalibration"] <= 1
    assert json.loads((tmp_path / "result.json").read_text())["accuracy"] == result["accuracy"]
    task = ClassificationTask(TaskConfig(**TASK))
    model = load_stage_model(Path(result["model_dir"]), task)
    assert widths(model) != [32, 64, 64] and task.cost(model)["params"] == result["params"]
    assert task.accuracy(model) == pytest.approx(result["accuracy"], abs=1e-9)
    if recipe is SlimCWDRecipe:  # uniform by default: the same fraction of every layer
        fractions = [w / full for w, full in zip(widths(model), [32, 64, 64])]
        assert max(fractions) - min(fractions) < 0.1


def test_interrupted_stage3_resumes_to_the_same_weights(tmp_path):
    sections = {"stage2": {"keep_macs": 0.5, "allocator": "global"},
                "stage3": {"epochs": 2, "lr": 0.02, "checkpoint_every": 1, "checkpoint_unit": "step",
                           "distill": {"feature_loss": "cwd", "logit_weight": 0.5}}}
    straight = SlimCWDRecipe(config(tmp_path / "a", **sections)).run()
    for stage in ("1_sparse", "2_prune"):  # the same finished stages: the interruption is in stage 3
        shutil.copytree(tmp_path / "a" / stage, tmp_path / "b" / stage)
    stopped = {**sections, "stage3": {**sections["stage3"], "max_steps": 5}}
    first = SlimCWDRecipe(config(tmp_path / "b", **stopped)).run()
    assert first["status"] == "incomplete" and first["stopped_in"] == "finetune"
    assert not (tmp_path / "b" / "3_finetune" / "done.json").exists()
    resumed = SlimCWDRecipe(config(tmp_path / "b", **sections)).run()
    assert resumed["status"] == "complete"
    assert resumed["stages"]["finetune"]["resumed_from"].endswith("step-00000005")
    assert resumed["stages"]["prune"] == first["stages"]["prune"] == straight["stages"]["prune"]  # read back
    a = load_stage_model(Path(straight["model_dir"]), ClassificationTask(TaskConfig(**TASK))).state_dict()
    b = load_stage_model(Path(resumed["model_dir"]), ClassificationTask(TaskConfig(**TASK))).state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-6, rtol=0), key
    assert resumed["accuracy"] == straight["accuracy"]
    # a changed stage-2 setting on the same folder is refused by name, unless overwrite is set
    with pytest.raises(ConfigError, match=r"stage 'prune' .* different settings \(stage2.keep_macs: 0.5 -> 0.6\)"):
        SlimCWDRecipe(config(tmp_path / "b", **{**sections, "stage2": {**sections["stage2"], "keep_macs": 0.6}})).run()
    # a folder from before the settings were recorded beside the fingerprint: still refused, with the likely causes
    marker = tmp_path / "b" / "2_prune" / "done.json"
    marker.write_text(json.dumps({k: v for k, v in json.loads(marker.read_text()).items() if k != "settings"}))
    with pytest.raises(ConfigError, match=r"stage 'prune' .* did not record its settings"):
        SlimCWDRecipe(config(tmp_path / "b", **{**sections, "stage2": {**sections["stage2"], "keep_macs": 0.6}})).run()
    # a finished stage whose saved model was deleted by hand runs again under the same settings
    shutil.rmtree(tmp_path / "b" / "3_finetune" / "model")
    again = SlimCWDRecipe(config(tmp_path / "b", **sections)).run()
    assert again["status"] == "complete" and again["accuracy"] == straight["accuracy"]


def test_settings_diff_names_every_changed_key():
    old = {"task": {"batch_size": 64, "augment": "standard"}, "stage1": {"s": 1e-3}}
    new = {"task": {"batch_size": 128, "augment": "standard", "image_size": None}, "stage1": {"s": 1e-3}}
    assert settings_diff(old, new) == ["task.batch_size: 64 -> 128", "task.image_size: absent -> null"]
    assert settings_diff(old, old) == []
    # values compare as the fingerprint hashes them (1 and 1.0 differ there), floats read without binary noise
    assert settings_diff({"stage1": {"s": 1e-3, "epochs": 1}}, {"stage1": {"s": 0.1 * 0.003, "epochs": 1.0}}) == [
        "stage1.epochs: 1 -> 1.0", "stage1.s: 0.001 -> 0.0003"]
    # a section replaced by a scalar, and fingerprint keys named by what they mean
    assert settings_diff({"schedule_args": {"a": 1}, "weights_digest": "ab"},
                         {"schedule_args": 3, "weights_digest": "cd"}) == [
        'schedule_args: {"a": 1} -> 3', 'content of task.weights (digest): "ab" -> "cd"']


def test_fingerprints_of_earlier_run_folders_still_match(tmp_path):
    """Stage fingerprints recorded by an earlier prunekit (these three come from a real gcp run folder): a change to
    how settings are hashed would make every user's finished stages refuse to resume. A new config key changes them
    too: update these values only on purpose, and say so in the release notes."""
    cfg = {"out_dir": str(tmp_path), "seed": 0,
           "task": {"model": "cifar_resnet56_b", "dataset": "cifar10", "train_subset": 10000, "test_limit": 5000,
                    "batch_size": 128, "eval_original": False},
           "stage1": {"epochs": 1, "lr": 0.01}, "stage2": {"keep_macs": 0.5, "max_ratio": 0.9},
           "stage3": {"epochs": 1, "lr": 0.01, "bn_recalibrate": 2048, "distill": {}}}
    recipe = GCPRecipe(cfg)
    assert [recipe.fingerprint(i) for i in range(3)] == ["86e69f09242ff081", "8ab24c3f92e92bc9", "6100aaeb1947def1"]


@pytest.mark.parametrize("sections, message", [
    ({"stage1": {"epochs": 0}}, r"stage1: epochs must be >= 1"),
    ({"stage1": {"schedule": "sometimes"}}, r"stage1: .*unknown schedule 'sometimes'"),
    ({"stage2": {"treshold": "group"}}, r"unknown keys \['treshold'\].*threshold"),
    ({"stage2": {"threshold": "median"}}, r"stage2: threshold must be 'group' or 'global'"),
    ({"stage2": {"keep_macs": 1.5}}, r"stage2: keep_macs must lie in \(0, 1\)"),
    ({"stage2": {"overrides": {"layer3.*": 1.2}}}, r"stage2: overrides\['layer3.\*'\] must lie in \[0, 1.0\)"),
    ({"stage2": {"scope_by": ["scale", "colour"]}}, r"stage2: scope_by must be .*colour"),
    ({"stage3": {"distill": {"feature_loss": "gram"}}}, r"stage3.distill: feature_loss must be"),
    ({"stage3": {"bn_recalibrate": -1}}, r"stage3: bn_recalibrate must be >= 0"),
    ({"task": {"augment": "heavy"}}, r"task: augment must be 'standard'"),
])
def test_config_errors_name_the_section_and_key(sections, message):
    with pytest.raises(ConfigError, match=message):
        GCPRecipe(sections)


def test_example_configs_load_and_cli_lists_recipes(capsys):
    from prunekit.cli.main import main

    gcp = GCPRecipe.from_file(str(EXAMPLES / "gcp_cifar_resnet56.yaml"), ["stage1.epochs=1"])
    assert gcp.config.stage1.epochs == 1 and gcp.config.stage1.schedule == "gcp_variable"
    slim = SlimCWDRecipe.from_file(str(EXAMPLES / "slim_cwd_cifar_resnet56.yaml"))
    assert slim.config.stage3.distill.feature_loss == "cwd" and slim.config.stage1.beta_factor == 10.0
    assert {"gcp", "slim-cwd"} <= set(RECIPES.names())
    assert main(["run", "gcp", "--config", str(EXAMPLES / "gcp_cifar_resnet56.yaml"), "--set", "stage3.epochs=3",
                 "--print-config"]) == 0
    assert '"epochs": 3' in capsys.readouterr().out
    assert main(["run", "gpc"]) == 2
    out = capsys.readouterr().out
    assert "gcp" in out and "slim-cwd" in out


def _trained_like_digits_cnn():
    model = build("digits_cnn").eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for bn in (model.bn1, model.bn2, model.bn3):
            bn.weight.copy_(0.5 + torch.rand(bn.weight.shape, generator=gen))
            bn.bias.copy_(torch.randn(bn.bias.shape, generator=gen))
            bn.running_mean.copy_(0.1 * torch.randn(bn.running_mean.shape, generator=gen))
            bn.running_var.copy_(0.5 + torch.rand(bn.running_var.shape, generator=gen))
        model.bn3.weight[[3, 7, 11, 20, 33, 40, 41, 50, 60, 63]] = 0.0  # constant channels: they output relu(beta)
        model.bn3.bias[[3, 7, 11]] = torch.tensor([0.8, 1.5, 2.0])  # ... which is not zero for these
    return model


@pytest.mark.parametrize("fold", [True, False])
def test_bias_folding_keeps_outputs_when_zero_scale_channels_go(fold):
    model = _trained_like_digits_cnn()
    x = torch.rand(16, 1, 8, 8)
    analysis = prunekit.analyze(model, x[:2])
    cfg = PruneStageConfig(keep_macs=None, ratio=10 / 160, fold_bias=fold)  # exactly the 10 zero-|gamma| channels
    pruned, plan, info = prune_with_folding(model, x[:2], analysis, cfg, "bn_scale", "global", None,
                                            {"normalizer": "none"})
    assert pruned.conv3.out_channels == 54 and pruned.conv2.out_channels == 64
    with torch.no_grad():
        error = (pruned(x) - model(x)).abs().max().item()
    if fold:
        assert info["folded_into"] == 1 and error < 1e-5  # fc's bias absorbed relu(beta) of the removed channels
    else:
        assert error > 1e-2  # dropping the constants changes the logits


def test_group_scopes_follow_scale_structure_and_name_overrides():
    model = build("cifar_resnet56_b", pretrained=False).eval()
    x = torch.randn(2, 3, 32, 32)
    analysis = prunekit.analyze(model, x)
    scopes = assign_scopes(analysis.groups, ("scale", "signature", "coupling"), {"layer3.*": 0.75})
    assert sorted(scopes["layer3.*"])[:2] == ["layer3.0.conv1", "layer3.0.downsample.0"]
    assert len(scopes["layer3.*"]) == 10  # 9 blocks' inner channels + the stage's residual stream
    assert scopes["1|Conv2d:k(3, 3):s(1, 1):gFalse|residual"] == ["conv1"]  # the stage-1 residual stream
    assert scopes["2|Conv2d:k(3, 3):s(2, 2):gFalse|single"] == ["layer2.0.conv1"]  # the stride-2 conv
    assert len(scopes["2|Conv2d:k(3, 3):s(1, 1):gFalse|single"]) == 8
    cfg = PruneStageConfig(keep_macs=0.6, max_ratio=0.9)
    options = {"by": ("gcp_scope",), "ratios": {"layer3.*": 0.75}, "normalizer": "none"}
    pruned, plan, _ = prune_with_folding(copy.deepcopy(model), x, analysis, cfg, "bn_scale", "scoped",
                                         {"reduction": "mean"}, options)
    layer3 = [g for g in analysis.groups if g.id in scopes["layer3.*"]]
    removed = sum(len(plan.removed.get(g.id, [])) for g in layer3)
    assert removed == int(0.75 * sum(g.size for g in layer3))  # the override's fixed ratio, searched scopes aside
    from prunekit.metrics.macs import count_macs

    kept = count_macs(pruned, x[:1]) / count_macs(model, x[:1])
    assert abs(kept - 0.6) < 0.6 * 0.01
