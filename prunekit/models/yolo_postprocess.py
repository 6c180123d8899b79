"""YOLO pre- and post-processing in plain torch: letterbox, box IoU, NMS, decoding to boxes/scores/classes.

No torchvision: `nms` is a greedy loop over score-sorted boxes that drops every remaining box whose IoU with the
kept one exceeds the threshold (the same rule as ``torchvision.ops.nms``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

#: Ultralytics' offset between classes in class-aware NMS (boxes of different classes never overlap).
MAX_WH = 7680.0


@dataclass(frozen=True)
class LetterboxInfo:
    """How an image was letterboxed: ``new = old * ratio + (pad_x, pad_y)``; `orig_shape` is (height, width)."""

    ratio: float
    pad: Tuple[float, float]
    orig_shape: Tuple[int, int]
    new_shape: Tuple[int, int]


def letterbox(image: Union[Image.Image, np.ndarray, str, Path], size: int = 640, fill: int = 114
              ) -> Tuple[torch.Tensor, LetterboxInfo]:
    """Resize keeping the aspect ratio (bilinear) and pad to ``size x size`` with grey, centred.

    Args:
        image: PIL image, uint8 array [H, W, 3] (RGB), or a path to an image file.
        size: output side.
        fill: padding value (0-255).

    Returns:
        image float32 [3, size, size] in 0-1, and the `LetterboxInfo` that maps boxes back.
    """
    if isinstance(image, (str, Path)):
        with Image.open(image) as handle:
            image = handle.convert("RGB")
    elif isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image = image.convert("RGB")
    w0, h0 = image.size
    ratio = min(size / h0, size / w0)
    new_w, new_h = int(round(w0 * ratio)), int(round(h0 * ratio))
    if (new_w, new_h) != (w0, h0):
        image = image.resize((new_w, new_h), Image.BILINEAR)
    dw, dh = (size - new_w) / 2, (size - new_h) / 2
    left, top = int(round(dw - 0.1)), int(round(dh - 0.1))
    canvas = np.full((size, size, 3), fill, dtype=np.uint8)
    canvas[top:top + new_h, left:left + new_w] = np.asarray(image)
    tensor = torch.from_numpy(np.ascontiguousarray(canvas.transpose(2, 0, 1), dtype=np.float32) / 255.0)
    return tensor, LetterboxInfo(ratio, (float(left), float(top)), (h0, w0), (size, size))


def xywh2xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """[..., 4] (cx, cy, w, h) -> [..., 4] (x1, y1, x2, y2)."""
    xy, wh = boxes[..., :2], boxes[..., 2:4] / 2
    return torch.cat((xy - wh, xy + wh), -1)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of xyxy boxes: [N, 4] x [M, 4] -> [N, M]."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-9)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, max_keep: Optional[int] = None
        ) -> torch.Tensor:
    """Greedy non-maximum suppression.

    Args:
        boxes: [N, 4] xyxy.
        scores: [N].
        iou_threshold: boxes with IoU strictly above this with a kept, higher-scoring box are dropped.
        max_keep: stop after this many kept boxes (the result equals the first `max_keep` of the full run).

    Returns:
        int64 [K] indices of kept boxes, by decreasing score.
    """
    order = torch.argsort(scores, descending=True, stable=True)
    keep: List[torch.Tensor] = []
    while order.numel() > 0 and (max_keep is None or len(keep) < max_keep):
        best = order[0]
        keep.append(best)
        rest = order[1:]
        if rest.numel() == 0:
            break
        iou = box_iou(boxes[best].unsqueeze(0), boxes[rest])[0]
        order = rest[iou <= iou_threshold]
    return torch.stack(keep) if keep else torch.zeros(0, dtype=torch.long, device=boxes.device)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, iou_threshold: float,
                max_keep: Optional[int] = None) -> torch.Tensor:
    """Class-aware NMS: boxes of different classes never suppress each other. Shapes as in `nms`."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    offset = classes.to(boxes.dtype).unsqueeze(1) * (boxes.abs().max() + MAX_WH)
    return nms(boxes + offset, scores, iou_threshold, max_keep)


def non_max_suppression(pred: torch.Tensor, conf_thres: float = 0.25, iou_thres: float = 0.45,
                        max_det: int = 300, agnostic: bool = False, max_nms: int = 30000) -> List[torch.Tensor]:
    """Filter a YOLOv8 inference tensor into per-image detections (one label per box: the best class).

    Args:
        pred: [B, 4 + nc, N], (cx, cy, w, h) then class scores (what `YOLOv8` returns in eval mode).
        conf_thres: minimum best-class score.
        iou_thres: NMS IoU threshold.
        max_det: detections kept per image.
        agnostic: class-agnostic NMS when True.
        max_nms: candidates (highest scores) passed to NMS.

    Returns:
        list of B tensors [n, 6]: (x1, y1, x2, y2, score, class) in the input's pixel frame.
    """
    out = []
    for p in pred.detach().float():
        boxes, cls_scores = p[:4].t(), p[4:].t()
        score, cls = cls_scores.max(1)
        mask = score > conf_thres
        boxes, score, cls = xywh2xyxy(boxes[mask]), score[mask], cls[mask]
        if score.numel() > max_nms:
            top = score.topk(max_nms).indices
            boxes, score, cls = boxes[top], score[top], cls[top]
        if agnostic:
            keep = nms(boxes, score, iou_thres, max_det)
        else:
            keep = batched_nms(boxes, score, cls, iou_thres, max_det)
        out.append(torch.cat((boxes[keep], score[keep, None], cls[keep, None].float()), 1))
    return out


def scale_boxes(boxes: torch.Tensor, info: LetterboxInfo) -> torch.Tensor:
    """Map xyxy boxes [n, 4] from the letterboxed frame back to the original image, clipped to it."""
    pad = boxes.new_tensor(info.pad * 2)
    out = (boxes[:, :4] - pad) / info.ratio
    h, w = info.orig_shape
    out[:, 0::2] = out[:, 0::2].clamp(0, w)
    out[:, 1::2] = out[:, 1::2].clamp(0, h)
    return out


def decode_predictions(pred: torch.Tensor, infos: Optional[Sequence[LetterboxInfo]] = None,
                       conf_thres: float = 0.25, iou_thres: float = 0.45, max_det: int = 300
                       ) -> List[Dict[str, torch.Tensor]]:
    """NMS, then boxes in original-image pixels when `infos` are given.

    Args:
        pred: [B, 4 + nc, N] model output.
        infos: one `LetterboxInfo` per image, or None to keep the network-input frame.

    Returns:
        per image ``{"boxes": [n, 4] xyxy, "scores": [n], "classes": [n] int64}``.
    """
    results = []
    for i, det in enumerate(non_max_suppression(pred, conf_thres, iou_thres, max_det)):
        boxes = det[:, :4] if infos is None else scale_boxes(det[:, :4], infos[i])
        results.append({"boxes": boxes, "scores": det[:, 4], "classes": det[:, 5].long()})
    return results
