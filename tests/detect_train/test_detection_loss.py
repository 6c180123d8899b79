"""YOLOv8 loss parts: CIoU, DFL, the task-aligned assigner and target batching, against hand computations."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

from prunekit.data.cifar_mosaic import cifar_mosaic
from prunekit.data.detection import collate_fn
from prunekit.models.yolov8 import YOLOv8, YOLOv8Config
from prunekit.train.detection_loss import (DetectionLoss, TaskAlignedAssigner, bbox_to_dist, box_iou_pairs,
                                           distribution_focal_loss, targets_to_batch)

torch.set_num_threads(2)


def test_ciou_matches_hand_computation():
    # Same aspect ratio: IoU = 1/7, centre distance^2 = 2, enclosing diagonal^2 = 18, v = 0.
    a, b = torch.tensor([0.0, 0.0, 2.0, 2.0]), torch.tensor([1.0, 1.0, 3.0, 3.0])
    assert float(box_iou_pairs(a, b)) == pytest.approx(1 / 7, abs=1e-6)
    assert float(box_iou_pairs(a, b, ciou=True)) == pytest.approx(1 / 7 - 2 / 18, abs=1e-6)
    # Different aspect ratios: a is 4 x 2, b is 2 x 3; intersection 2 x 2 = 4, union 8 + 6 - 4 = 10.
    a, b = torch.tensor([0.0, 0.0, 4.0, 2.0]), torch.tensor([1.0, 0.0, 3.0, 3.0])
    iou = 0.4
    rho2_over_c2 = 0.25 / (4 ** 2 + 3 ** 2)  # centres (2, 1) and (2, 1.5); enclosing box 4 x 3
    v = 4 / math.pi ** 2 * (math.atan(2 / 3) - math.atan(4 / 2)) ** 2
    alpha = v / (v - iou + 1)
    expected = iou - rho2_over_c2 - alpha * v
    assert expected == pytest.approx(0.373177, abs=1e-5)
    assert float(box_iou_pairs(a, b, ciou=True)) == pytest.approx(expected, abs=1e-5)
    # Identical boxes: CIoU = 1; disjoint far boxes: negative.
    assert float(box_iou_pairs(a, a, ciou=True)) == pytest.approx(1.0, abs=1e-5)
    assert float(box_iou_pairs(a, a + 10, ciou=True)) < 0


def test_ciou_gradient_moves_box_towards_target():
    pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]], requires_grad=True)
    target = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    (1 - box_iou_pairs(pred, target, ciou=True)).sum().backward()
    assert (pred.grad < 0).all()  # every coordinate should increase


def test_dfl_matches_hand_computation():
    reg_max = 16
    logits = torch.zeros(1, 4, reg_max)
    logits[0, 0, 2], logits[0, 0, 3] = 2.0, 1.0
    target = torch.tensor([[2.3, 0.0, 7.5, 14.98]])
    out = distribution_focal_loss(logits, target)
    log_z = math.log(math.exp(2.0) + math.exp(1.0) + (reg_max - 2))
    side0 = -(0.7 * (2.0 - log_z) + 0.3 * (1.0 - log_z))
    uniform = math.log(reg_max)  # sides 1-3 have uniform logits: both bins cost log(16)
    assert out.shape == (1, 1)
    assert float(out) == pytest.approx((side0 + 3 * uniform) / 4, abs=1e-5)
    # Mass split evenly on the two bins around 7.5 reaches DFL's minimum there, the entropy log 2.
    sharp = torch.full((1, 4, reg_max), -20.0)
    sharp[0, :, 7], sharp[0, :, 8] = 2.0, 2.0
    assert float(distribution_focal_loss(sharp, torch.full((1, 4), 7.5))) == pytest.approx(math.log(2), abs=1e-4)
    skewed = torch.full((1, 4, reg_max), -30.0)
    skewed[0, :, 7], skewed[0, :, 8] = math.log(0.1), math.log(0.9)
    entropy = -(0.1 * math.log(0.1) + 0.9 * math.log(0.9))
    assert float(distribution_focal_loss(skewed, torch.full((1, 4), 7.9))) == pytest.approx(entropy, abs=1e-4)


def test_bbox_to_dist_and_targets_to_batch():
    points = torch.tensor([[4.0, 4.0]])
    boxes = torch.tensor([[[0.0, 1.0, 10.0, 40.0]]])
    assert bbox_to_dist(points, boxes, 15).tolist() == [[[4.0, 3.0, 6.0, pytest.approx(14.99)]]]
    targets = torch.tensor([[1, 3, 0.5, 0.5, 0.25, 0.5], [0, 7, 0.25, 0.25, 0.5, 0.5], [1, 2, 0.75, 0.5, 0.5, 0.25]])
    labels, xyxy, mask = targets_to_batch(targets, 3, (64, 128))
    assert labels.tolist() == [[7, 0], [3, 2], [0, 0]]
    assert mask.tolist() == [[True, False], [True, True], [False, False]]
    assert xyxy[0, 0].tolist() == [0.0, 0.0, 64.0, 32.0]
    assert xyxy[1, 1].tolist() == [64.0, 24.0, 128.0, 40.0]


def _grid(stride: float = 8.0, cells: int = 4) -> torch.Tensor:
    c = (torch.arange(cells, dtype=torch.float32) + 0.5) * stride
    gy, gx = torch.meshgrid(c, c, indexing="ij")
    return torch.stack((gx, gy), -1).view(-1, 2)  # [16, 2]


def test_assigner_assigns_inside_gt_and_nothing_outside():
    points = _grid()  # centres 4, 12, 20, 28 on a 32 x 32 image
    gt = torch.tensor([[[0.0, 0.0, 16.0, 16.0]]])  # contains the 4 top-left centres
    pd_boxes = gt.expand(1, 16, 4).clone()
    pd_scores = torch.full((1, 16, 3), 0.5)
    out = TaskAlignedAssigner(num_classes=3, topk=10)(pd_scores, pd_boxes, points, torch.tensor([[2]]), gt,
                                                      torch.tensor([[True]]))
    inside = ((points[:, 0] < 16) & (points[:, 1] < 16)).unsqueeze(0)
    assert torch.equal(out.fg_mask, inside)
    assert int(out.fg_mask.sum()) == 4
    assert (out.labels[out.fg_mask] == 2).all()
    assert torch.allclose(out.boxes[out.fg_mask], gt[0].expand(4, 4))
    assert (out.scores[~out.fg_mask] == 0).all()
    # Perfect boxes: IoU 1, so each positive's class target is the GT's best IoU (1) on class 2 only.
    assert torch.allclose(out.scores[out.fg_mask], torch.tensor([0.0, 0.0, 1.0]).expand(4, 3), atol=1e-5)
    # A padded (masked) GT assigns nothing.
    empty = TaskAlignedAssigner(3)(pd_scores, pd_boxes, points, torch.tensor([[2]]), gt, torch.tensor([[False]]))
    assert not empty.fg_mask.any()


def test_assigner_topk_and_conflicts():
    points = _grid()
    gt = torch.tensor([[[0.0, 0.0, 32.0, 32.0], [0.0, 0.0, 16.0, 16.0]]])  # the small box lies inside the big one
    pd_boxes = torch.zeros(1, 16, 4)
    pd_boxes[0, :] = torch.tensor([0.0, 0.0, 32.0, 32.0])
    pd_boxes[0, 0] = torch.tensor([0.0, 0.0, 16.0, 16.0])  # anchor 0 predicts the small box exactly
    scores = torch.linspace(0.1, 0.9, 16).unsqueeze(-1).expand(16, 2).clone().unsqueeze(0)
    out = TaskAlignedAssigner(num_classes=2, topk=3)(scores, pd_boxes, points, torch.tensor([[0, 1]]), gt,
                                                     torch.tensor([[True, True]]))
    # Small GT: candidates are anchors 0, 1, 4, 5; only anchor 0's prediction overlaps it well -> it ranks first.
    # Anchor 0 is also a top-3 candidate of nothing else (its IoU with the big box is 0.25), so it goes to GT 1.
    assert out.gt_index[0, 0] == 1 and out.labels[0, 0] == 1
    # Big GT: IoU 1 everywhere except anchor 0, so its top 3 are the highest-scoring anchors 15, 14, 13.
    big = (out.gt_index[0] == 0) & out.fg_mask[0]
    assert big.nonzero().flatten().tolist() == [13, 14, 15]
    assert int(out.fg_mask.sum()) == 6  # 3 per GT, no anchor shared


def test_assigner_shared_anchor_goes_to_highest_iou():
    points = torch.tensor([[10.0, 10.0]])
    gt = torch.tensor([[[0.0, 0.0, 20.0, 20.0], [5.0, 5.0, 30.0, 30.0]]])
    pd_boxes = torch.tensor([[[4.0, 4.0, 28.0, 28.0]]])  # closer to the second GT
    out = TaskAlignedAssigner(num_classes=2, topk=1)(torch.full((1, 1, 2), 0.5), pd_boxes, points,
                                                     torch.tensor([[0, 1]]), gt, torch.tensor([[True, True]]))
    iou = box_iou_pairs(gt[0], pd_boxes[0].expand(2, 4))
    assert iou[1] > iou[0]
    assert out.fg_mask.all() and out.gt_index[0, 0] == 1 and out.labels[0, 0] == 1


def test_loss_on_real_batch_is_finite_and_handles_empty_targets():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = YOLOv8(YOLOv8Config(nc=10, width=0.0625)).train()
    images, targets = collate_fn([cifar_mosaic("train", 4, 128, seed=3)[i] for i in range(4)])
    loss_fn = DetectionLoss.for_model(model)
    assert (loss_fn.nc, loss_fn.reg_max, loss_fn.strides) == (10, 16, (8.0, 16.0, 32.0))
    loss = loss_fn(model(images), targets)
    assert torch.isfinite(loss) and float(loss.detach()) > 0
    assert loss_fn.last_items["positives"] >= targets.shape[0]  # every mosaic object covers several anchors
    assert loss_fn.last_items["box"] > 0 and loss_fn.last_items["dfl"] > 0
    loss.backward()
    assert model.stem.conv.weight.grad.abs().sum() > 0
    empty = loss_fn(model(images), torch.zeros(0, 6))
    assert loss_fn.last_items["box"] == 0 and loss_fn.last_items["dfl"] == 0 and float(empty.detach()) > 0
    with pytest.raises(Exception, match="training mode"):
        loss_fn([model(images)[0]], targets)
