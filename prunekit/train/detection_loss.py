"""The YOLOv8 detection loss: task-aligned assignment, CIoU box loss, distribution focal loss, BCE classification.

Follows the loss of Ultralytics YOLOv8 (Jocher et al., 2023) as described by its parts' papers, written from the
formulas:

* Task-aligned assigner (TOOD, Feng et al., ICCV 2021): for each ground-truth box, candidate anchors are the anchor
  points strictly inside it; each candidate gets the alignment metric ``t = s^alpha * IoU^beta`` (s = predicted
  score of the GT's class, IoU between predicted and GT box; alpha 0.5, beta 6.0); the `topk` (10) candidates by t
  are positives. An anchor positive for several GTs keeps the one with the largest IoU. Positive anchors get soft
  class targets ``t / max_t(gt) * max_IoU(gt)`` (normalised per GT), negatives 0.
* Classification: BCE-with-logits against those soft targets, summed and divided by the sum of the targets.
* Box regression on positives, weighted by the anchor's target score: ``1 - CIoU`` (Zheng et al., AAAI 2020) and the
  distribution focal loss (GFL, Li et al., NeurIPS 2020) over `reg_max` bins per box side.
* Total: ``7.5 * box + 0.5 * cls + 1.5 * dfl`` (the YOLOv8 gains). Unlike Ultralytics, the total is not multiplied
  by the batch size (``scale_by_batch=True`` restores that convention).

Coordinates: the model predicts, per anchor, (left, top, right, bottom) distances in units of the level's stride;
the assigner works in input pixels; box and DFL losses in stride units (as the model predicts them).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

EPS = 1e-7


# --------------------------------------------------------------------------------------------- box geometry


def box_iou_pairs(a: torch.Tensor, b: torch.Tensor, ciou: bool = False, eps: float = EPS) -> torch.Tensor:
    """IoU (or CIoU) of corresponding xyxy boxes.

    Args:
        a, b: [..., 4] (x1, y1, x2, y2), broadcastable against each other.
        ciou: return Complete-IoU ``IoU - rho^2 / c^2 - alpha * v`` with ``v = 4 / pi^2 * (atan(w_b / h_b) -
            atan(w_a / h_a))^2`` and ``alpha = v / (v - IoU + 1)`` (alpha is not differentiated, as in the paper's
            reference code).

    Returns:
        [...] IoU values (CIoU lies in (-1, 1]).
    """
    ax1, ay1, ax2, ay2 = a.unbind(-1)
    bx1, by1, bx2, by2 = b.unbind(-1)
    wa, ha = ax2 - ax1, (ay2 - ay1).clamp(min=eps)
    wb, hb = bx2 - bx1, (by2 - by1).clamp(min=eps)
    inter = (torch.min(ax2, bx2) - torch.max(ax1, bx1)).clamp(min=0) * \
            (torch.min(ay2, by2) - torch.max(ay1, by1)).clamp(min=0)
    union = wa * ha + wb * hb - inter + eps
    iou = inter / union
    if not ciou:
        return iou
    cw = torch.max(ax2, bx2) - torch.min(ax1, bx1)
    ch = torch.max(ay2, by2) - torch.min(ay1, by1)
    c2 = cw.pow(2) + ch.pow(2) + eps
    rho2 = ((bx1 + bx2 - ax1 - ax2).pow(2) + (by1 + by2 - ay1 - ay2).pow(2)) / 4
    v = (4 / math.pi ** 2) * (torch.atan(wb / hb) - torch.atan(wa / ha)).pow(2)
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


def bbox_to_dist(points: torch.Tensor, boxes: torch.Tensor, max_dist: float) -> torch.Tensor:
    """xyxy boxes -> (left, top, right, bottom) distances from anchor points, clamped to [0, max_dist - 0.01].

    Args:
        points: [N, 2] anchor points; boxes: [..., N, 4] in the same units.

    Returns:
        [..., N, 4].
    """
    lt = points - boxes[..., :2]
    rb = boxes[..., 2:] - points
    return torch.cat((lt, rb), -1).clamp(0, max_dist - 0.01)


def distribution_focal_loss(pred_dist: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """DFL: cross-entropy towards the two integer bins around a continuous target, weighted by proximity.

    ``DFL(p, y) = -((y_r - y) * log p_l + (y - y_l) * log p_r)`` with ``y_l = floor(y)``, ``y_r = y_l + 1``.

    Args:
        pred_dist: [n, 4, reg_max] bin logits per box side.
        target: [n, 4] continuous distances in [0, reg_max - 1).

    Returns:
        [n, 1]: the mean over the four sides.
    """
    n, sides, reg_max = pred_dist.shape
    left = target.long()
    right = left + 1
    w_left = right.float() - target
    w_right = 1.0 - w_left
    logits = pred_dist.reshape(-1, reg_max)
    ce_left = F.cross_entropy(logits, left.reshape(-1), reduction="none").view(n, sides)
    ce_right = F.cross_entropy(logits, right.clamp(max=reg_max - 1).reshape(-1), reduction="none").view(n, sides)
    return (ce_left * w_left + ce_right * w_right).mean(-1, keepdim=True)


# --------------------------------------------------------------------------------------------- assigner


@dataclass
class Assignment:
    """What the assigner decided for every anchor.

    Attributes:
        labels: [B, N] class of the assigned GT (0 where unassigned).
        boxes: [B, N, 4] xyxy of the assigned GT (pixels).
        scores: [B, N, nc] soft class targets (0 for negatives).
        fg_mask: [B, N] bool, positive anchors.
        gt_index: [B, N] index of the assigned GT among the image's boxes.
    """

    labels: torch.Tensor
    boxes: torch.Tensor
    scores: torch.Tensor
    fg_mask: torch.Tensor
    gt_index: torch.Tensor


class TaskAlignedAssigner(nn.Module):
    """Task-aligned label assignment (TOOD), as used by YOLOv8.

    Args:
        num_classes: classes of the score tensor.
        topk: positives per GT before resolving conflicts.
        alpha / beta: exponents of the alignment metric ``s^alpha * IoU^beta``.
    """

    def __init__(self, num_classes: int, topk: int = 10, alpha: float = 0.5, beta: float = 6.0, eps: float = 1e-9):
        super().__init__()
        if num_classes < 1 or topk < 1:
            raise ConfigError(f"TaskAlignedAssigner: need num_classes >= 1 and topk >= 1, got {num_classes}, {topk}")
        self.num_classes, self.topk, self.alpha, self.beta, self.eps = num_classes, topk, alpha, beta, eps

    @staticmethod
    def inside_gts(points: torch.Tensor, gt_boxes: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
        """Bool [B, M, N]: anchor point n lies strictly inside GT box m (points [N, 2], gt_boxes [B, M, 4])."""
        lt = points[None, None] - gt_boxes[..., None, :2]
        rb = gt_boxes[..., None, 2:] - points[None, None]
        return torch.cat((lt, rb), -1).amin(-1) > eps

    @torch.no_grad()
    def forward(self, pd_scores: torch.Tensor, pd_boxes: torch.Tensor, points: torch.Tensor, gt_labels: torch.Tensor,
                gt_boxes: torch.Tensor, gt_mask: torch.Tensor) -> Assignment:
        """Assign GT boxes to anchors.

        Args:
            pd_scores: [B, N, nc] predicted class probabilities (after sigmoid).
            pd_boxes: [B, N, 4] predicted xyxy boxes (pixels).
            points: [N, 2] anchor points (pixels).
            gt_labels: [B, M] int64 classes; gt_boxes: [B, M, 4] xyxy pixels; gt_mask: [B, M] bool (real boxes).

        Returns:
            an `Assignment`.
        """
        b, n, nc = pd_scores.shape
        m = gt_boxes.shape[1]
        device = pd_scores.device
        if m == 0:
            return Assignment(torch.zeros(b, n, dtype=torch.long, device=device), pd_boxes.new_zeros(b, n, 4),
                              pd_scores.new_zeros(b, n, nc), torch.zeros(b, n, dtype=torch.bool, device=device),
                              torch.zeros(b, n, dtype=torch.long, device=device))
        candidates = self.inside_gts(points, gt_boxes) & gt_mask[..., None]  # [B, M, N]
        labels = gt_labels.clamp(0, nc - 1)
        cls_score = pd_scores.gather(2, labels[:, None, :].expand(b, n, m)).transpose(1, 2)  # [B, M, N]
        iou = box_iou_pairs(gt_boxes[:, :, None, :], pd_boxes[:, None, :, :]).clamp(min=0)  # [B, M, N]
        iou = iou * candidates
        metric = cls_score.pow(self.alpha) * iou.pow(self.beta) * candidates
        k = min(self.topk, n)
        top = metric.topk(k, dim=-1).indices  # [B, M, k]
        topk_mask = torch.zeros_like(candidates).scatter_(-1, top, True)
        positive = topk_mask & candidates  # [B, M, N]
        # An anchor claimed by several GTs keeps the GT with the largest IoU.
        multi = positive.sum(1, keepdim=True) > 1  # [B, 1, N]
        best = F.one_hot(torch.where(positive, iou, -1.0).argmax(1), m).transpose(1, 2).bool()  # [B, M, N]
        positive = torch.where(multi, best & positive, positive)
        fg_mask = positive.any(1)  # [B, N]
        gt_index = positive.float().argmax(1)  # [B, N]
        target_labels = labels.gather(1, gt_index)
        target_boxes = gt_boxes.gather(1, gt_index[..., None].expand(b, n, 4))
        # Soft targets: metric normalised per GT so that its best anchor reaches the GT's best IoU.
        metric = metric * positive
        max_metric = metric.amax(-1, keepdim=True)
        max_iou = (iou * positive).amax(-1, keepdim=True)
        norm = (metric * max_iou / (max_metric + self.eps)).amax(1)  # [B, N]
        scores = F.one_hot(target_labels, nc).to(pd_scores.dtype) * (norm * fg_mask)[..., None]
        return Assignment(target_labels, target_boxes, scores, fg_mask, gt_index)


# --------------------------------------------------------------------------------------------- the loss


@dataclass
class DetectionLossConfig:
    """Gains and assigner settings (YOLOv8 defaults).

    Attributes:
        box / cls / dfl: loss gains.
        topk, alpha, beta: task-aligned assigner settings.
        scale_by_batch: multiply the total by the batch size (the Ultralytics convention, meant for its lr).
    """

    box: float = 7.5
    cls: float = 0.5
    dfl: float = 1.5
    topk: int = 10
    alpha: float = 0.5
    beta: float = 6.0
    scale_by_batch: bool = False

    def __post_init__(self):
        if min(self.box, self.cls, self.dfl) < 0 or self.topk < 1:
            raise ConfigError(f"DetectionLossConfig: gains must be >= 0 and topk >= 1, got {self}")


def targets_to_batch(targets: torch.Tensor, batch_size: int, image_hw: Sequence[float]
                     ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Collated YOLO targets -> padded per-image tensors.

    Args:
        targets: [n, 6] (batch index, class, cx, cy, w, h) normalised to the input (what `collate_fn` returns).
        batch_size: B.
        image_hw: input (height, width) in pixels.

    Returns:
        labels [B, M] int64, boxes [B, M, 4] xyxy pixels, mask [B, M] bool; M = most boxes in one image (>= 0).
    """
    targets = targets.reshape(-1, 6).float()
    device = targets.device
    if targets.numel() == 0:
        return (torch.zeros(batch_size, 0, dtype=torch.long, device=device),
                torch.zeros(batch_size, 0, 4, device=device),
                torch.zeros(batch_size, 0, dtype=torch.bool, device=device))
    index = targets[:, 0].long()
    if index.min() < 0 or index.max() >= batch_size:
        raise ConfigError(f"detection loss: target batch indices must lie in [0, {batch_size}), got "
                          f"[{int(index.min())}, {int(index.max())}]")
    counts = torch.bincount(index, minlength=batch_size)
    m = int(counts.max())
    h, w = float(image_hw[0]), float(image_hw[1])
    scale = targets.new_tensor([w, h, w, h])
    xywh = targets[:, 2:6] * scale
    xyxy = torch.cat((xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2), 1)
    order = torch.argsort(index, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(index), device=device) - starts[index[order]]
    labels = torch.zeros(batch_size, m, dtype=torch.long, device=device)
    boxes = torch.zeros(batch_size, m, 4, device=device)
    mask = torch.zeros(batch_size, m, dtype=torch.bool, device=device)
    labels[index[order], slot] = targets[order, 1].long()
    boxes[index[order], slot] = xyxy[order]
    mask[index[order], slot] = True
    return labels, boxes, mask


def _anchors(feats: Sequence[torch.Tensor], strides: Sequence[float]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cell-centre anchor points [N, 2] (grid units) and strides [N, 1] (same layout as the model's decoder)."""
    from ..models.yolov8 import make_anchors

    return make_anchors(feats, torch.as_tensor(strides, dtype=feats[0].dtype, device=feats[0].device))


class DetectionLoss(nn.Module):
    """YOLOv8 loss over the Detect head's training outputs.

    Args:
        num_classes: nc of the head.
        strides: stride of each output level (8, 16, 32).
        reg_max: DFL bins per side (16).
        cfg: gains and assigner settings.

    Call: ``loss(outputs, targets)`` with outputs the list of [B, 4 * reg_max + nc, H_i, W_i] and targets [n, 6].
    Returns the scalar total; the last components (already multiplied by their gains) are in ``last_items``.
    """

    def __init__(self, num_classes: int, strides: Sequence[float] = (8, 16, 32), reg_max: int = 16,
                 cfg: Optional[DetectionLossConfig] = None):
        super().__init__()
        self.cfg = cfg or DetectionLossConfig()
        self.nc, self.reg_max, self.strides = int(num_classes), int(reg_max), tuple(float(s) for s in strides)
        self.assigner = TaskAlignedAssigner(self.nc, self.cfg.topk, self.cfg.alpha, self.cfg.beta)
        self.register_buffer("bins", torch.arange(reg_max, dtype=torch.float32), persistent=False)
        self.last_items: Dict[str, float] = {}

    @classmethod
    def for_model(cls, model: nn.Module, cfg: Optional[DetectionLossConfig] = None) -> "DetectionLoss":
        """Read nc, strides and reg_max from a `YOLOv8`'s ``detect`` head (also after channel pruning)."""
        head = getattr(model, "detect", None)
        if head is None or not hasattr(head, "cv3"):
            raise ConfigError(f"detection loss: {type(model).__name__} has no YOLOv8 'detect' head")
        nc = head.cv3[0][-1].out_channels
        return cls(nc, head.stride.tolist(), head.reg_max, cfg)

    def decode(self, points: torch.Tensor, pred_dist: torch.Tensor) -> torch.Tensor:
        """[B, N, 4 * reg_max] logits -> [B, N, 4] xyxy boxes in grid units (softmax expectation per side)."""
        b, n, _ = pred_dist.shape
        dist = pred_dist.view(b, n, 4, self.reg_max).softmax(-1) @ self.bins.to(pred_dist)
        return torch.cat((points - dist[..., :2], points + dist[..., 2:]), -1)

    def forward(self, outputs: Sequence[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        feats = list(outputs)
        if len(feats) != len(self.strides):
            raise ConfigError(f"detection loss: {len(feats)} output levels for strides {self.strides}; call the model "
                              "in training mode (it returns the raw per-level maps)")
        b = feats[0].shape[0]
        nbox = 4 * self.reg_max
        if feats[0].shape[1] != nbox + self.nc:
            raise ConfigError(f"detection loss: outputs have {feats[0].shape[1]} channels, expected "
                              f"4 * {self.reg_max} + {self.nc}")
        flat = torch.cat([f.reshape(b, f.shape[1], -1) for f in feats], 2).transpose(1, 2)  # [B, N, C]
        pred_dist, pred_logits = flat[..., :nbox].float(), flat[..., nbox:].float()
        points, stride = _anchors(feats, self.strides)  # [N, 2], [N, 1]
        image_hw = (feats[0].shape[2] * self.strides[0], feats[0].shape[3] * self.strides[0])
        labels, gt_boxes, gt_mask = targets_to_batch(targets.to(flat.device), b, image_hw)
        pred_boxes = self.decode(points, pred_dist)  # grid units
        assigned = self.assigner(pred_logits.detach().sigmoid(), pred_boxes.detach() * stride, points * stride,
                                 labels, gt_boxes, gt_mask)
        score_sum = assigned.scores.sum().clamp(min=1.0)
        loss_cls = F.binary_cross_entropy_with_logits(pred_logits, assigned.scores, reduction="sum") / score_sum
        loss_box = loss_dfl = flat.new_zeros(())
        fg = assigned.fg_mask
        if fg.any():
            weight = assigned.scores.sum(-1)[fg].unsqueeze(-1)  # [P, 1]
            target_boxes = assigned.boxes / stride  # grid units
            ciou = box_iou_pairs(pred_boxes[fg], target_boxes[fg], ciou=True)
            loss_box = ((1.0 - ciou).unsqueeze(-1) * weight).sum() / score_sum
            target_dist = bbox_to_dist(points, target_boxes, self.reg_max - 1)[fg]
            dfl = distribution_focal_loss(pred_dist[fg].view(-1, 4, self.reg_max), target_dist)
            loss_dfl = (dfl * weight).sum() / score_sum
        items = {"box": self.cfg.box * loss_box, "cls": self.cfg.cls * loss_cls, "dfl": self.cfg.dfl * loss_dfl}
        self.last_items = {k: float(v.detach()) for k, v in items.items()}
        self.last_items["positives"] = float(fg.sum())
        total = items["box"] + items["cls"] + items["dfl"]
        return total * b if self.cfg.scale_by_batch else total
