"""Detection helpers for the training loop and for evaluation: the YOLOv8 loss bound to a model, batched
prediction with NMS, COCO mAP on a dataset, and agreement mAP between two detectors.

- `detection_loss_fn(model)`: the `DetectionLoss` of a `YOLOv8` (reads nc / strides / reg_max from its head), to
  pass as ``loss_fn`` to `prunekit.train.loop.train` with ``collate_fn=prunekit.data.detection.collate_fn``.
- `predict(model, images)`: per-image detections [n, 6] (x1, y1, x2, y2, score, class) in input pixels.
- `evaluate_map(model, dataset)`: mAP50 / mAP50-95 against the dataset's labels (pycocotools).
- `agreement_map(model, reference, images)`: mAP of `model`'s detections scored against `reference`'s confident
  detections used as ground truth (how far a compressed model still agrees with its original on unlabelled images).
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..errors import ConfigError
from ..metrics.detection import detection_map, targets_to_pixels
from ..models.yolo_postprocess import non_max_suppression
from .detection_loss import DetectionLoss, DetectionLossConfig

Images = Union[torch.Tensor, Sequence[torch.Tensor]]


def detection_loss_fn(model: nn.Module, cfg: Optional[DetectionLossConfig] = None) -> DetectionLoss:
    """The YOLOv8 loss for `model` (a `YOLOv8`, pruned or not): ``loss(outputs, targets [n, 6]) -> scalar``."""
    return DetectionLoss.for_model(model, cfg)


def _device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _batches(images: Images, batch_size: int) -> Iterable[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        if images.dim() != 4:
            raise ConfigError(f"prunekit.train.detection: images must be [N, 3, H, W], got {tuple(images.shape)}")
        for i in range(0, images.shape[0], batch_size):
            yield images[i:i + batch_size]
    else:
        items = list(images)
        for i in range(0, len(items), batch_size):
            yield torch.stack(items[i:i + batch_size])


@torch.no_grad()
def predict(model: nn.Module, images: Images, conf: float = 0.001, iou: float = 0.6, max_det: int = 300,
            batch_size: int = 16) -> List[torch.Tensor]:
    """Detections of a YOLOv8-style model (eval output [B, 4 + nc, N]) after class-aware NMS.

    Args:
        model: returns [B, 4 + nc, N] in eval mode; its training mode is restored afterwards.
        images: [N, 3, H, W] or a sequence of [3, H, W] tensors in 0-1.
        conf / iou / max_det: NMS settings.

    Returns:
        per image a CPU tensor [n, 6] (x1, y1, x2, y2, score, class) in input pixels.
    """
    was_training = model.training
    model.eval()
    device = _device(model)
    out: List[torch.Tensor] = []
    try:
        for batch in _batches(images, batch_size):
            pred = model(batch.to(device))
            if not isinstance(pred, torch.Tensor) or pred.dim() != 3:
                raise ConfigError(f"prunekit.train.detection.predict: {type(model).__name__} must return "
                                  "[B, 4 + nc, N] in eval mode")
            out.extend(d.cpu() for d in non_max_suppression(pred, conf, iou, max_det))
    finally:
        model.train(was_training)
    return out


def ground_truth(dataset, limit: Optional[int] = None) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """Images [3, H, W] and pixel targets [n, 5] (class, x1, y1, x2, y2) of the first `limit` dataset items."""
    count = len(dataset) if limit is None else min(limit, len(dataset))
    images, targets = [], []
    for i in range(count):
        image, tgt = dataset[i][:2]
        h, w = image.shape[-2:]
        images.append(image)
        targets.append(targets_to_pixels(tgt, w, h))
    return images, targets


def score_detections(detections: Sequence[torch.Tensor], targets: Sequence[torch.Tensor], num_classes: int
                     ) -> Dict[str, float]:
    """COCO mAP of detections [n, 6] (x1, y1, x2, y2, score, class) against targets [m, 5] (class, x1..y2)."""
    return detection_map(detections, targets, num_classes)


def _num_classes(model: nn.Module, dataset=None) -> int:
    nc = getattr(dataset, "num_classes", None)
    if nc is None:
        head = getattr(model, "detect", None)
        if head is None:
            raise ConfigError("prunekit.train.detection: cannot tell the number of classes (no dataset.num_classes "
                              "and no 'detect' head)")
        nc = head.cv3[0][-1].out_channels
    return int(nc)


def evaluate_map(model: nn.Module, dataset, conf: float = 0.001, iou: float = 0.6, limit: Optional[int] = None,
                 batch_size: int = 16, max_det: int = 100) -> Dict[str, float]:
    """mAP of `model` on a detection dataset of ``(image [3, S, S], targets [n, 6])`` items.

    Args:
        conf / iou: NMS confidence and IoU thresholds (0.001 / 0.6 as YOLO validation).
        limit: use only the first `limit` items.
        max_det: detections kept per image (COCOeval scores at most 100 per image anyway).

    Returns:
        ``{"map50", "map50_95", "images"}``.
    """
    images, targets = ground_truth(dataset, limit)
    detections = predict(model, images, conf, iou, max_det, batch_size)
    result = score_detections(detections, targets, _num_classes(model, dataset))
    result["images"] = len(images)
    return result


def agreement_map(model: nn.Module, reference_model: nn.Module, images: Images, conf: float = 0.25,
                  iou: float = 0.6, batch_size: int = 8, eval_conf: float = 0.001) -> Dict[str, float]:
    """mAP of `model`'s detections against `reference_model`'s detections (score >= `conf`) used as ground truth.

    Args:
        model: the detector being checked (a pruned or distilled copy, say).
        reference_model: the detector whose confident detections serve as labels (the original).
        images: [N, 3, H, W] or a sequence of [3, H, W] tensors.
        conf: confidence threshold for the reference's pseudo-labels.
        eval_conf: confidence threshold of `model`'s detections (low, as in mAP evaluation).

    Returns:
        ``{"map50", "map50_95", "reference_boxes"}`` (NaN mAPs when the reference detects nothing).
    """
    images = images if isinstance(images, torch.Tensor) else list(images)
    reference = predict(reference_model, images, conf, iou, max_det=100, batch_size=batch_size)
    candidate = predict(model, images, eval_conf, iou, max_det=100, batch_size=batch_size)
    pseudo = [torch.cat((d[:, 5:6], d[:, :4]), 1) for d in reference]
    result = score_detections(candidate, pseudo, _num_classes(reference_model))
    result["reference_boxes"] = int(sum(d.shape[0] for d in reference))
    return result
