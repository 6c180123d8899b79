"""YOLO-format detection datasets: ``images/{split}/*.jpg`` plus ``labels/{split}/*.txt`` (``class cx cy w h``,
normalised to the image), letterboxed to a square.

Items are ``(image, targets)``: image float32 [3, S, S] in 0-1 (letterboxed with grey 114), targets float32
[n, 6] = (batch index placeholder 0, class, cx, cy, w, h) normalised to the letterboxed S x S frame. `collate_fn`
stacks images and fills the batch index. Users with internet access can fetch COCO8 from `COCO8_URL`.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Tuple, Union

import numpy as np
import torch

from ..errors import ConfigError, DataNotFoundError
from ..models.yolo_postprocess import LetterboxInfo, letterbox
from ..paths import data_file

COCO8_URL = "https://github.com/ultralytics/assets/releases/download/v0.0.0/coco8.zip"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def read_yolo_labels(path: Path) -> np.ndarray:
    """Rows ``class cx cy w h`` of a YOLO label file as float32 [n, 5]; a missing or empty file gives [0, 5]."""
    if not path.exists():
        return np.zeros((0, 5), dtype=np.float32)
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    if any(len(row) != 5 for row in rows):
        raise DataNotFoundError(f"prunekit.data.detection: {path}: expected 5 numbers per line (class cx cy w h)")
    return np.array(rows, dtype=np.float32).reshape(-1, 5)


class YoloDetectionDataset(torch.utils.data.Dataset):
    """A YOLO-format folder split.

    Args:
        root: folder holding ``images/`` and ``labels/``.
        split: subfolder name (``train``, ``val``...).
        img_size: side of the letterboxed square.
        num_classes: number of classes of the label space (80 for COCO).
    """

    def __init__(self, root: Union[str, Path], split: str, img_size: int = 640, num_classes: int = 80):
        self.root, self.split, self.img_size, self.num_classes = Path(root), split, img_size, num_classes
        folder = self.root / "images" / split
        if not folder.is_dir():
            raise DataNotFoundError(f"prunekit.data.detection: no image folder {folder}")
        self.image_paths: List[Path] = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.image_paths:
            raise DataNotFoundError(f"prunekit.data.detection: no images in {folder}")

    def __len__(self) -> int:
        return len(self.image_paths)

    def label_path(self, index: int) -> Path:
        return self.root / "labels" / self.split / (self.image_paths[index].stem + ".txt")

    def labels(self, index: int) -> np.ndarray:
        """Raw labels [n, 5] (class, cx, cy, w, h) normalised to the original image."""
        return read_yolo_labels(self.label_path(index))

    def load(self, index: int) -> Tuple[torch.Tensor, torch.Tensor, LetterboxInfo]:
        """Image [3, S, S], targets [n, 6] and the `LetterboxInfo` mapping boxes back to the original image."""
        image, info = letterbox(self.image_paths[index], self.img_size)
        raw = torch.from_numpy(self.labels(index))
        h0, w0 = info.orig_shape
        size = float(self.img_size)
        targets = torch.zeros((raw.shape[0], 6), dtype=torch.float32)
        targets[:, 1] = raw[:, 0]
        targets[:, 2] = (raw[:, 1] * w0 * info.ratio + info.pad[0]) / size
        targets[:, 3] = (raw[:, 2] * h0 * info.ratio + info.pad[1]) / size
        targets[:, 4] = raw[:, 3] * w0 * info.ratio / size
        targets[:, 5] = raw[:, 4] * h0 * info.ratio / size
        return image, targets, info

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        image, targets, _ = self.load(index)
        return image, targets

    def __repr__(self) -> str:
        return f"YoloDetectionDataset({self.root}, split={self.split}, n={len(self)}, img_size={self.img_size})"


def collate_fn(batch: Sequence[Tuple[torch.Tensor, torch.Tensor]]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Stack images to [B, 3, S, S] and concatenate targets to [sum n, 6] with column 0 = index in the batch."""
    images = torch.stack([item[0] for item in batch])
    targets = []
    for i, (_, t) in enumerate(batch):
        t = t.clone()
        t[:, 0] = i
        targets.append(t)
    return images, torch.cat(targets) if targets else torch.zeros((0, 6))


def coco8(split: str = "val", img_size: int = 640, **kwargs) -> YoloDetectionDataset:
    """COCO8 (first 8 COCO train2017 images: 4 train, 4 val; 80 classes) from ``<data root>/coco8``.

    ``split="test"`` reads ``val`` (COCO8 has no test split).
    """
    split = "val" if split == "test" else split
    if split not in ("train", "val"):
        raise ConfigError(f"prunekit.data.detection.coco8: split must be 'train' or 'val', got {split!r}")
    root = data_file("coco8", "COCO8 dataset (download: " + COCO8_URL + ")")
    return YoloDetectionDataset(root, split, img_size, num_classes=80, **kwargs)
