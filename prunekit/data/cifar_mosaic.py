"""A seeded detection set made of real CIFAR-10 images pasted onto larger canvases.

Each item places 1-4 randomly scaled CIFAR-10 images (32x32 JPEGs from ``cifar10/cifar10_jpg_{train,test}.tar.gz``)
on a plain or noisy background, with limited overlap; the detection class is the CIFAR class (10 classes). Items are
generated on access from ``(seed, index)``, so the set has any size, costs no disk and is identical on every run.

The tarball is decoded once into ``<cache root>/cifar10_jpg/{split}_{images,labels}.npy`` (uint8 [N, 32, 32, 3],
int64 [N]; images sorted by class then file number) and memory-mapped afterwards.
"""
from __future__ import annotations

import io as _io
import math
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError, DataNotFoundError
from ..io import atomic_write
from ..paths import cache_root, data_file

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TARBALLS = {"train": "cifar10/cifar10_jpg_train.tar.gz", "test": "cifar10/cifar10_jpg_test.tar.gz"}


def _decode_tarball(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """All ``<split>/<class>/NNNN.jpg`` members -> uint8 [N, 32, 32, 3] and int64 [N], sorted by (class, number)."""
    items = []
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) < 3 or parts[-2] not in CIFAR10_CLASSES:
                continue
            data = tar.extractfile(member).read()
            with Image.open(_io.BytesIO(data)) as img:
                pixels = np.asarray(img.convert("RGB"), dtype=np.uint8)
            items.append((CIFAR10_CLASSES.index(parts[-2]), parts[-1], pixels))
    if not items:
        raise DataNotFoundError(f"prunekit.data.cifar_mosaic: no CIFAR-10 JPEGs found in {path}")
    items.sort(key=lambda item: (item[0], item[1]))
    return np.stack([item[2] for item in items]), np.array([item[0] for item in items], dtype=np.int64)


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, array)

    atomic_write(path, write)


def cifar10_jpg_arrays(split: str) -> Tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 JPEG images (memory-mapped uint8 [N, 32, 32, 3]) and labels [N] for ``train`` or ``test``."""
    if split not in TARBALLS:
        raise ConfigError(f"prunekit.data.cifar_mosaic: CIFAR split must be 'train' or 'test', got {split!r}")
    folder = cache_root() / "cifar10_jpg"
    images_path, labels_path = folder / f"{split}_images.npy", folder / f"{split}_labels.npy"
    if not (images_path.exists() and labels_path.exists()):
        images, labels = _decode_tarball(data_file(TARBALLS[split], "CIFAR-10 JPEG tarball"))
        _save_npy(images_path, images)
        _save_npy(labels_path, labels)
    images, labels = np.load(images_path, mmap_mode="r"), np.load(labels_path)
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (32, 32, 3):
        raise DataNotFoundError(f"prunekit.data.cifar_mosaic: corrupt cache {images_path}; delete it to rebuild")
    return images, labels


@dataclass(frozen=True)
class Placement:
    """One pasted CIFAR image: its index in the CIFAR split, class, and pixel box [x1, x2) x [y1, y2)."""

    source: int
    cls: int
    x1: int
    y1: int
    x2: int
    y2: int


class CifarMosaic(torch.utils.data.Dataset):
    """Detection items built from CIFAR-10 images.

    Args:
        images: uint8 [N, 32, 32, 3] CIFAR images; labels: [N] classes.
        n_images: number of items.
        img_size: canvas side S.
        objects: (min, max) objects per canvas.
        scale: (min, max) object side as a fraction of S (aspect ratio varies in [3/4, 4/3]).
        max_overlap: largest allowed intersection / smaller-box-area between two objects.
        seed: item i is generated from ``numpy.random.default_rng([seed, i])``.

    Items: image float32 [3, S, S] in 0-1 and targets float32 [n, 6] = (0, class, cx, cy, w, h) normalised.
    """

    num_classes = 10
    classes = CIFAR10_CLASSES

    def __init__(self, images: np.ndarray, labels: np.ndarray, n_images: int, img_size: int = 128,
                 objects: Tuple[int, int] = (1, 4), scale: Tuple[float, float] = (0.2, 0.5),
                 max_overlap: float = 0.15, seed: int = 0):
        if n_images < 1 or img_size < 16 or not (1 <= objects[0] <= objects[1]):
            raise ConfigError(f"prunekit.data.cifar_mosaic: need n_images >= 1, img_size >= 16, 1 <= objects[0] <= "
                              f"objects[1]; got {n_images}, {img_size}, {objects}")
        if not (0 < scale[0] <= scale[1] <= 1):
            raise ConfigError(f"prunekit.data.cifar_mosaic: scale must satisfy 0 < min <= max <= 1, got {scale}")
        self.images, self.labels = images, labels
        self.n_images, self.img_size, self.objects = n_images, img_size, tuple(objects)
        self.scale, self.max_overlap, self.seed = tuple(scale), max_overlap, seed

    def __len__(self) -> int:
        return self.n_images

    def _rng(self, index: int) -> np.random.Generator:
        if not 0 <= index < self.n_images:
            raise IndexError(f"prunekit.data.cifar_mosaic: index {index} out of range [0, {self.n_images})")
        return np.random.default_rng([self.seed, index])

    def _overlaps(self, box: Tuple[int, int, int, int], others: List[Placement]) -> bool:
        x1, y1, x2, y2 = box
        for o in others:
            iw, ih = min(x2, o.x2) - max(x1, o.x1), min(y2, o.y2) - max(y1, o.y1)
            if iw > 0 and ih > 0:
                smaller = min((x2 - x1) * (y2 - y1), (o.x2 - o.x1) * (o.y2 - o.y1))
                if iw * ih > self.max_overlap * smaller:
                    return True
        return False

    def placements(self, index: int) -> List[Placement]:
        """The objects of item `index`, in drawing order (later ones are drawn on top)."""
        rng, size = self._rng(index), self.img_size
        count = int(rng.integers(self.objects[0], self.objects[1] + 1))
        placed: List[Placement] = []
        for _ in range(count):
            for _attempt in range(30):
                side = rng.uniform(*self.scale) * size
                aspect = math.exp(rng.uniform(math.log(0.75), math.log(4 / 3)))
                w = int(np.clip(round(side * math.sqrt(aspect)), 4, size))
                h = int(np.clip(round(side / math.sqrt(aspect)), 4, size))
                x1, y1 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
                if not self._overlaps((x1, y1, x1 + w, y1 + h), placed):
                    source = int(rng.integers(0, len(self.labels)))
                    placed.append(Placement(source, int(self.labels[source]), x1, y1, x1 + w, y1 + h))
                    break
        return placed

    def object_pixels(self, p: Placement) -> np.ndarray:
        """The CIFAR image of `p` resized (bilinear) to its box: uint8 [y2 - y1, x2 - x1, 3]."""
        img = Image.fromarray(np.asarray(self.images[p.source]))
        return np.asarray(img.resize((p.x2 - p.x1, p.y2 - p.y1), Image.BILINEAR))

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        size = self.img_size
        base = rng.integers(0, 256, 3).astype(np.float32)
        if rng.random() < 0.5:
            return np.broadcast_to(base, (size, size, 3)).astype(np.uint8)
        coarse = rng.normal(0, 40, (max(2, size // 16), max(2, size // 16), 3)).astype(np.float32)
        smooth = np.stack([np.asarray(Image.fromarray(coarse[..., c]).resize((size, size), Image.BILINEAR))
                           for c in range(3)], -1)
        fine = rng.normal(0, 8, (size, size, 3))
        return np.clip(base + smooth + fine, 0, 255).astype(np.uint8)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        placements = self.placements(index)
        canvas = self._background(np.random.default_rng([self.seed, index, 1])).copy()
        for p in placements:
            canvas[p.y1:p.y2, p.x1:p.x2] = self.object_pixels(p)
        size = float(self.img_size)
        targets = torch.tensor([[0.0, p.cls, (p.x1 + p.x2) / 2 / size, (p.y1 + p.y2) / 2 / size,
                                 (p.x2 - p.x1) / size, (p.y2 - p.y1) / size] for p in placements],
                               dtype=torch.float32).reshape(-1, 6)
        image = torch.from_numpy(np.ascontiguousarray(canvas.transpose(2, 0, 1), dtype=np.float32) / 255.0)
        return image, targets

    def __repr__(self) -> str:
        return (f"CifarMosaic(n={self.n_images}, img_size={self.img_size}, objects={self.objects}, "
                f"seed={self.seed}, sources={len(self.labels)})")


def cifar_mosaic(split: str = "train", n_images: Optional[int] = None, img_size: int = 128,
                 objects: Tuple[int, int] = (1, 4), seed: int = 0, **kwargs) -> CifarMosaic:
    """Mosaic detection set from CIFAR-10 ``train`` or ``test`` (``val`` = ``test``) images.

    Args:
        n_images: items (default 5,000 for train, 1,000 otherwise).
        **kwargs: `CifarMosaic` options (``scale``, ``max_overlap``).
    """
    source = "test" if split in ("val", "test") else split
    images, labels = cifar10_jpg_arrays(source)
    count = n_images if n_images is not None else (5000 if source == "train" else 1000)
    return CifarMosaic(images, labels, count, img_size, objects, seed=seed, **kwargs)
