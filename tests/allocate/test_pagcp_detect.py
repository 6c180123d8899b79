"""PAGCP on a YOLOv8-style detector: the loss components as tasks, and the sweep-log plot."""
import math

import pytest
import torch

from prunekit import planning
from prunekit.allocate.pagcp import Pagcp
from prunekit.allocate.pagcp_detect import DetectionTasks
from prunekit.allocate.pagcp_plot import plot_sweep
from prunekit.allocate.pagcp_sweep import TaskOracle
from prunekit.errors import ConfigError
from prunekit.graph.types import Budget
from prunekit.models import build
from prunekit.planning.cost import macs_cost
from prunekit.train.detection import detection_loss_fn

torch.set_num_threads(1)


def _detector_and_batches():
    torch.manual_seed(0)
    model = build("yolov8n", pretrained=False, nc=3, width=0.0625).eval()
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(2):
        x = torch.rand(2, 3, 64, 64, generator=gen)
        # (batch index, class, cx, cy, w, h) normalised
        t = torch.tensor([[0, 0, 0.3, 0.3, 0.25, 0.3], [0, 2, 0.7, 0.6, 0.3, 0.2], [1, 1, 0.5, 0.5, 0.4, 0.4]])
        batches.append((x, t))
    return model, batches


def test_components_are_the_detection_loss_items_and_share_one_loss_call():
    model, batches = _detector_and_batches()
    tasks = DetectionTasks(model)
    out = tasks.forward(model, batches[0])
    assert isinstance(out, list) and len(out) == 3  # raw per-level maps although the model is in eval mode
    assert not model.training and not model.detect.training
    reference = detection_loss_fn(model)
    reference(out, batches[0][1])
    calls = []
    tasks.loss.register_forward_hook(lambda *a: calls.append(1))
    values = {name: float(fn(out, batches[0])) for name, fn in tasks.tasks().items()}
    assert len(calls) == 1
    for name in ("box", "cls", "dfl"):
        assert math.isclose(values[name], reference.last_items[name], rel_tol=1e-6)
        assert values[name] > 0
    with pytest.raises(ConfigError, match="components"):
        DetectionTasks(model, ("box", "obj"))


def test_detector_sweep_keeps_every_component_within_the_allowance_and_plots(tmp_path):
    model, batches = _detector_and_batches()
    tasks = DetectionTasks(model)
    inputs = batches[0][0]
    analysis = planning.analyse(model, inputs)
    config = planning.PlanConfig(allocator={"name": "pagcp", "progress": False, "ratio_steps": 3},
                                 budget=Budget(ratio=0.999))
    chosen = {"stage2.cv1.conv", "stage4.cv2.conv", "td_p3.cv2.conv", "detect.cv2.0.0.conv", "detect.cv3.1.1.conv"}
    groups = [g for g in planning.eligibility(analysis, config) if g.id in chosen]  # a few units keep it fast
    assert len(groups) == len(chosen)
    scores = planning.scoring(model, groups, config, inputs)
    policy = Pagcp(progress=False, ratio_steps=3, tolerance=0.05, allowance=1.5).attach(
        model, tasks.tasks(), batches, forward=tasks.forward, cost=macs_cost(model, groups, inputs))
    planning.allocate(model, groups, scores, config, inputs, policy=policy)
    log = policy.provenance()
    assert log["tasks"] == ["box", "cls", "dfl"]
    base = TaskOracle(tasks.tasks(), batches, tasks.forward).losses(model)
    for name in ("box", "cls", "dfl"):
        assert log["final_losses"][name] <= 1.5 * base[name] * (1 + 1e-5)
    assert {u["group"] for u in log["units"]} == chosen
    assert all(u["stopped_by"] in (None, "box", "cls", "dfl") for u in log["units"])
    assert any(u["replayed"] for u in log["units"])  # units behind the stem replay the front of the network
    png = plot_sweep({"detector": log}, tmp_path / "sweep.png", base_macs=1e6)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ConfigError, match="no sweep log"):
        plot_sweep({}, tmp_path / "none.png")
