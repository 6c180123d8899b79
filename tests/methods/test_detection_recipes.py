"""The gcp and slim-cwd recipes on a YOLO-style detector: the same stages as on classifiers, through DetectionTask."""
from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import torch

import prunekit
from prunekit.errors import ConfigError
from prunekit.io import save_tensors
from prunekit.methods.base import load_stage_model
from prunekit.methods.gcp import GCPRecipe
from prunekit.methods.slim_cwd import SlimCWDRecipe
from prunekit.methods.task import DetectionTask, TaskConfig, make_task
from prunekit.models import build

torch.set_num_threads(2)

MODEL_ARGS = {"nc": 10, "width": 0.0625}  # a width-1/16 YOLOv8n: seconds per epoch on 2 CPU cores


@pytest.fixture(scope="module")
def base_weights(tmp_path_factory):
    """A starting detector's weights file (random initialisation with the head's bias prior at 64 px)."""
    torch.manual_seed(0)
    model = build("yolov8n", pretrained=False, **MODEL_ARGS)
    model.detect.bias_init(64)
    path = tmp_path_factory.mktemp("base") / "detector.safetensors"
    save_tensors(path, model.state_dict())
    return path


def task_section(weights, **extra):
    return {"model": "yolov8n", "dataset": "cifar_mosaic", "weights": str(weights), "model_args": dict(MODEL_ARGS),
            "dataset_args": {"img_size": 64}, "image_size": 64, "augment": None, "train_subset": 48,
            "test_limit": 16, "batch_size": 8, "eval_batch_size": 16, "latency_repeats": 2, "eval_original": False,
            **extra}


def config(out, weights, **sections):
    stage = {"epochs": 1, "lr": 0.02, "momentum": 0.937, "weight_decay": 5e-4, "warmup_steps": 2,
             "min_lr_ratio": 0.05, "grad_clip": 10.0}
    cfg = {"out_dir": str(out), "task": task_section(weights), "stage1": {**stage, "s": 1e-3},
           "stage2": {"keep_macs": 0.5}, "stage3": {**stage, "bn_recalibrate": 16}}
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return cfg


def test_make_task_picks_the_detection_task_and_refuses_mismatched_images(base_weights):
    task = make_task(TaskConfig(**task_section(base_weights)))
    assert isinstance(task, DetectionTask) and task.metric == "map50" and task.input_shape == (3, 64, 64)
    start = task.build()
    reference = build("yolov8n", pretrained=False, **MODEL_ARGS)
    reference.load_state_dict(prunekit.io.load_tensors(base_weights))
    x = task.example_inputs()
    torch.testing.assert_close(start(x), reference.eval()(x))
    wrong = make_task(TaskConfig(**task_section(base_weights, image_size=96)))
    with pytest.raises(ConfigError, match=r"gives \(3, 64, 64\) images .* set task.image_size"):
        wrong.train_set
    with pytest.raises(ConfigError, match=r"augment 'standard' is a classification augmentation"):
        make_task(TaskConfig(**task_section(base_weights, augment="standard")))
    with pytest.raises(ConfigError, match=r"weights file .*missing.safetensors does not exist"):
        make_task(TaskConfig(**task_section(Path(base_weights).parent / "missing.safetensors"))).build()


def test_gcp_prunes_a_detector_with_the_detection_loss_search_and_reloads(tmp_path, base_weights):
    cfg = config(tmp_path / "gcp", base_weights, stage2={"scope_by": ["scale"], "search_images": 16},
                 stage3={"distill": {"feature_loss": "attention", "layers": ["td_p3", "bu_p4", "bu_p5"],
                                     "weight": 50.0}})
    result = GCPRecipe(cfg).run()
    assert result["status"] == "complete" and result["metric"] == "map50"
    assert 0.0 <= result["map50"] <= 1.0 and 0.0 <= result["map50_95"] <= result["map50"]
    assert abs(result["macs_keep"] - 0.5) < 0.02 and result["params_keep"] < 0.9
    prune = result["stages"]["prune"]
    # the per-scope multipliers were searched by the YOLOv8 loss after BN re-estimation: finite, compared losses
    assert prune["search"]["evaluations"] > 1 and 0 < prune["search"]["loss_best"] <= prune["search"]["loss_uniform"]
    assert len(prune["scopes"]) >= 3 and "map50" in prune and "map50" in result["stages"]["sparse"]
    finetune = result["stages"]["finetune"]
    assert finetune["distilled_layers"] == ["td_p3", "bu_p4", "bu_p5"] and finetune["bn_recalibrated"] > 0
    assert "map50_before_bn_recalibration" in finetune
    # the saved model: rebuilt from the task, and by prunekit.load from the plan alone (registry name + model_args)
    task = make_task(TaskConfig(**task_section(base_weights)))
    model = load_stage_model(Path(result["model_dir"]), task)
    assert task.cost(model) == {"params": result["params"], "macs": result["macs"]}
    assert task.score(model)["map50"] == pytest.approx(result["map50"], abs=1e-9)
    alone = prunekit.load(result["model_dir"])
    x = task.example_inputs()
    torch.testing.assert_close(alone(x), model(x))


def test_slim_cwd_on_a_detector_and_the_weights_file_is_part_of_the_fingerprint(tmp_path, base_weights):
    cfg = config(tmp_path / "slim", base_weights, stage2={"allocator": "global"},
                 stage3={"distill": {"feature_loss": "cwd", "layers": ["td_p3", "bu_p4", "bu_p5"], "weight": 2.0,
                                     "teacher": "original"}})
    result = SlimCWDRecipe(cfg).run()
    assert result["status"] == "complete" and abs(result["macs_keep"] - 0.5) < 0.02
    assert result["stages"]["finetune"]["feature_loss"] == "cwd"
    # other starting weights under the same path: the finished stages are refused, not silently reused
    other = tmp_path / "other.safetensors"
    model = build("yolov8n", pretrained=False, **MODEL_ARGS)
    save_tensors(other, model.state_dict())
    moved = copy.deepcopy(cfg)
    moved["task"]["weights"] = str(other)
    refusal = r"stage 'sparse' .* different settings \(.*content of task.weights \(digest\): "
    with pytest.raises(ConfigError, match=refusal):
        SlimCWDRecipe(moved).run()
    # logit KD needs a classifier's logits: refused by name before stage 3 trains (stages 1 and 2 reused)
    logit = copy.deepcopy(cfg)
    logit["out_dir"] = str(tmp_path / "logit")
    logit["stage3"]["distill"]["logit_weight"] = 1.0
    for stage in ("1_sparse", "2_prune"):
        shutil.copytree(tmp_path / "slim" / stage, tmp_path / "logit" / stage)
    with pytest.raises(ConfigError, match=r"stage3.distill: logit_weight .* 'yolov8n' is a detection model"):
        SlimCWDRecipe(logit).run()
    assert not (tmp_path / "logit" / "3_finetune" / "ckpt").exists()


@pytest.mark.parametrize("recipe, name", [(GCPRecipe, "gcp"), (SlimCWDRecipe, "slim_cwd")])
def test_detection_example_configs_load_and_resolve_to_a_detection_task(recipe, name, base_weights):
    path = Path(__file__).resolve().parents[2] / "examples" / f"{name}_cifar_mosaic_yolov8n.yaml"
    loaded = recipe.from_file(str(path), [f"task.weights={base_weights}", "task.model_args.width=0.0625"])
    cfg = loaded.config
    assert cfg.stage2.keep_params == 0.5 and cfg.stage2.keep_macs is None and cfg.stage3.distill.teacher == "original"
    assert cfg.stage1.grad_clip == 10.0 and cfg.stage3.min_lr_ratio == 0.05
    task = make_task(cfg.task)
    assert isinstance(task, DetectionTask) and task.input_shape == (3, 128, 128)
    assert loaded.fingerprint(0) != recipe.from_file(str(path), ["task.weights=" + str(base_weights),
                                                                 "task.model_args.width=0.125"]).fingerprint(0)
    with pytest.raises(ConfigError, match=r"stage2: keep_macs and keep_params are two budgets"):
        recipe.from_file(str(path), ["stage2.keep_macs=0.5"])
