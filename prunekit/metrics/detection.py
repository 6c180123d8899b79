"""Detection mAP with pycocotools' COCOeval (mAP@0.5 and mAP@[0.5:0.95], 101-point interpolation, 100 dets/image).

Ground truth and detections are built as COCO-format dicts in memory; nothing is written to disk.
"""
from __future__ import annotations

import contextlib
import io
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import ConfigError


def targets_to_pixels(targets: torch.Tensor, width: float, height: float) -> torch.Tensor:
    """YOLO targets [n, 6] (batch index, class, cx, cy, w, h normalised) -> [n, 5] (class, x1, y1, x2, y2) pixels."""
    t = torch.as_tensor(targets, dtype=torch.float32).reshape(-1, 6)
    cx, cy, w, h = t[:, 2] * width, t[:, 3] * height, t[:, 4] * width, t[:, 5] * height
    return torch.stack((t[:, 1], cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), 1)


def _as_array(x, columns: int, what: str, index: int) -> np.ndarray:
    arr = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    arr = arr.reshape(-1, columns) if arr.size else np.zeros((0, columns))
    if arr.shape[1] != columns:
        raise ConfigError(f"prunekit.metrics.detection: {what}[{index}] must be [n, {columns}], got {arr.shape}")
    return arr


def _coco_dicts(predictions: Sequence, targets: Sequence, num_classes: int,
                image_sizes: Optional[Sequence[Tuple[int, int]]]) -> Tuple[dict, List[dict]]:
    images, annotations, detections = [], [], []
    for i, (pred, tgt) in enumerate(zip(predictions, targets)):
        h, w = image_sizes[i] if image_sizes is not None else (0, 0)
        images.append({"id": i, "height": h, "width": w})
        for cls, x1, y1, x2, y2 in _as_array(tgt, 5, "targets", i):
            bw, bh = x2 - x1, y2 - y1
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(cls) + 1,
                                "bbox": [x1, y1, bw, bh], "area": bw * bh, "iscrowd": 0})
        for x1, y1, x2, y2, score, cls in _as_array(pred, 6, "predictions", i):
            detections.append({"image_id": i, "category_id": int(cls) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                               "score": float(score)})
    categories = [{"id": c + 1, "name": str(c)} for c in range(num_classes)]
    return {"images": images, "annotations": annotations, "categories": categories}, detections


def detection_map(predictions: Sequence, targets: Sequence, num_classes: int,
                  image_sizes: Optional[Sequence[Tuple[int, int]]] = None) -> Dict[str, float]:
    """COCO mAP of per-image detections against per-image ground truth.

    Args:
        predictions: per image [n, 6] (x1, y1, x2, y2, score, class) in pixels.
        targets: per image [m, 5] (class, x1, y1, x2, y2) in pixels.
        num_classes: classes 0..num_classes-1 (classes without ground truth are left out of the mean, as in COCO).
        image_sizes: optional (height, width) per image (only stored; COCOeval does not need them).

    Returns:
        ``{"map50": AP at IoU 0.5, "map50_95": AP averaged over IoU 0.5:0.95}``; NaN when there is no ground truth.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(predictions) != len(targets):
        raise ConfigError(f"prunekit.metrics.detection: {len(predictions)} prediction lists for {len(targets)} images")
    gt_dict, detections = _coco_dicts(predictions, targets, num_classes, image_sizes)
    if not gt_dict["annotations"]:
        return {"map50": math.nan, "map50_95": math.nan}
    if not detections:
        return {"map50": 0.0, "map50_95": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_dict
        gt.createIndex()
        dt = gt.loadRes(detections)
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {"map50": max(float(evaluator.stats[1]), 0.0), "map50_95": max(float(evaluator.stats[0]), 0.0)}
