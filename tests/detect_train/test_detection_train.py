"""Training a small YOLOv8 with the detection loss through the reference loop, and the mAP / agreement helpers."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from prunekit.data.cifar_mosaic import cifar_mosaic
from prunekit.data.detection import collate_fn
from prunekit.models.yolov8 import YOLOv8, YOLOv8Config
from prunekit.train.detection import (agreement_map, detection_loss_fn, evaluate_map, ground_truth, predict,
                                      score_detections)
from prunekit.train.loop import TrainConfig, train

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def trained():
    """A width-1/16 YOLOv8 (nc=10) trained for 32 steps on a 64-image cifar_mosaic at 128 px, plus its start."""
    torch.manual_seed(0)
    model = YOLOv8(YOLOv8Config(nc=10, width=0.0625))
    model.detect.bias_init(128)
    start = copy.deepcopy(model)
    data = cifar_mosaic("train", 64, 128, seed=0)
    cfg = TrainConfig(epochs=4, batch_size=8, lr=0.02, optimizer="sgd", momentum=0.9, warmup_steps=4,
                      grad_clip=10.0, log_every=1, progress=False, device="cpu")
    result = train(model, data, cfg, loss_fn=detection_loss_fn(model), collate_fn=collate_fn)
    return model, start, result


def test_loss_decreases_when_training(trained):
    _, _, result = trained
    losses = [v for _, v in result.losses]
    assert result.steps == 32 and len(losses) == 32
    assert all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.85 * first, (first, last)  # ~25% lower after 32 steps on 2 CPU cores


def test_targets_as_predictions_score_one_and_shifted_boxes_score_less():
    data = cifar_mosaic("test", 12, 128, seed=5)
    images, targets = ground_truth(data)
    assert len(images) == 12 and all(t.shape[1] == 5 for t in targets)
    perfect = [torch.cat((t[:, 1:5], torch.ones(len(t), 1), t[:, :1]), 1) for t in targets]
    assert score_detections(perfect, targets, 10) == {"map50": pytest.approx(1.0), "map50_95": pytest.approx(1.0)}
    shifted = [d.clone() for d in perfect]
    for d in shifted:
        width = d[:, 2] - d[:, 0]
        d[:, [0, 2]] += 0.4 * width[:, None]  # IoU with the target = 0.6 / 1.4 = 0.43 < 0.5
    assert score_detections(shifted, targets, 10)["map50"] == pytest.approx(0.0)
    wrong_class = [torch.cat((d[:, :5], (d[:, 5:] + 1) % 10), 1) for d in perfect]
    assert score_detections(wrong_class, targets, 10)["map50"] == pytest.approx(0.0)


def test_evaluate_map_on_trained_model(trained):
    model, _, _ = trained
    data = cifar_mosaic("test", 16, 128, seed=1)
    result = evaluate_map(model, data, limit=12)
    assert result["images"] == 12
    assert 0.0 <= result["map50_95"] <= result["map50"] <= 1.0
    assert model.training  # predict restores the mode
    dets = predict(model, torch.stack([data[i][0] for i in range(4)]), conf=0.001)
    assert len(dets) == 4 and all(d.shape[1] == 6 for d in dets)
    assert all(((d[:, 4] > 0.001) & (d[:, 4] <= 1)).all() for d in dets)
    assert evaluate_map(model, data, conf=0.999, limit=4)["map50"] == 0.0


def test_agreement_map_self_is_one_and_other_model_is_lower(trained):
    model, start, _ = trained
    images = torch.stack([cifar_mosaic("test", 8, 128, seed=2)[i][0] for i in range(8)])
    # The briefly trained model is not confident: take as threshold the median over images of the 10th best score,
    # which keeps about 10 pseudo-labels per image (COCOeval scores at most 100 detections per image).
    dets = predict(model, images, conf=0.0)
    conf = float(torch.stack([d[:, 4].sort(descending=True).values[9] for d in dets]).median())
    same = agreement_map(model, model, images, conf=conf)
    assert same["reference_boxes"] > 0
    assert same["map50"] == pytest.approx(1.0) and same["map50_95"] == pytest.approx(1.0)
    other = agreement_map(start, model, images, conf=conf)
    assert other["reference_boxes"] == same["reference_boxes"]
    assert other["map50"] < 0.5
