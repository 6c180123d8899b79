"""Detection datasets (COCO8 reader, CIFAR mosaic) and COCO mAP."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from prunekit.data import load
from prunekit.data.cifar_mosaic import CIFAR10_CLASSES, cifar10_jpg_arrays, cifar_mosaic
from prunekit.data.detection import coco8, collate_fn
from prunekit.errors import ConfigError
from prunekit.metrics.detection import detection_map, targets_to_pixels
from prunekit.models.yolo_postprocess import scale_boxes
from prunekit.paths import data_file


@pytest.mark.parametrize("split", ["train", "val"])
def test_coco8_boxes_per_image_match_label_files(split):
    ds = coco8(split=split)
    assert len(ds) == 4
    for i in range(len(ds)):
        label_file = data_file(f"coco8/labels/{split}/{ds.image_paths[i].stem}.txt")
        lines = [ln for ln in label_file.read_text().splitlines() if ln.strip()]
        image, targets, info = ds.load(i)
        assert image.shape == (3, 640, 640) and image.dtype == torch.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert targets.shape == (len(lines), 6)
        assert targets[:, 1].tolist() == [float(ln.split()[0]) for ln in lines]
        assert (targets[:, 2:] >= 0).all() and (targets[:, 2:] <= 1.0 + 1e-6).all()
        # map back to the original image: equals the label file's boxes in original pixels
        h0, w0 = info.orig_shape
        raw = torch.tensor([[float(v) for v in ln.split()[1:]] for ln in lines])
        expected = torch.stack((raw[:, 0] - raw[:, 2] / 2, raw[:, 1] - raw[:, 3] / 2,
                                raw[:, 0] + raw[:, 2] / 2, raw[:, 1] + raw[:, 3] / 2), 1) * torch.tensor([w0, h0] * 2)
        back = scale_boxes(targets_to_pixels(targets, 640, 640)[:, 1:], info)
        assert torch.allclose(back, expected.clamp(min=0), atol=0.05)


def test_coco8_registry_collate_and_splits():
    ds = load("coco8", split="test")  # COCO8 has no test split: reads val
    assert ds.split == "val"
    images, targets = collate_fn([ds[0], ds[1]])
    n0, n1 = len(ds.labels(0)), len(ds.labels(1))
    assert images.shape == (2, 3, 640, 640) and targets.shape == (n0 + n1, 6)
    assert targets[:, 0].tolist() == [0.0] * n0 + [1.0] * n1
    with pytest.raises(ConfigError, match="split"):
        coco8(split="bogus")


@pytest.fixture(scope="module")
def mosaic():
    return cifar_mosaic("test", n_images=40, img_size=128, seed=3)


def test_cifar_mosaic_deterministic(mosaic):
    again = cifar_mosaic("test", n_images=40, img_size=128, seed=3)
    other = cifar_mosaic("test", n_images=40, img_size=128, seed=4)
    for i in (0, 7, 39):
        a, b, c = mosaic[i], again[i], other[i]
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert not torch.equal(a[0], c[0])
    with pytest.raises(IndexError):
        mosaic[40]


def test_cifar_mosaic_boxes_classes_and_real_content(mosaic):
    counts, classes = [], set()
    for i in range(len(mosaic)):
        image, targets = mosaic[i]
        assert image.shape == (3, 128, 128) and 0 <= image.min() and image.max() <= 1
        placements = mosaic.placements(i)
        assert 1 <= len(placements) == targets.shape[0] <= 4
        counts.append(len(placements))
        boxes = targets_to_pixels(targets, 128, 128)
        assert (boxes[:, 1:] >= -1e-4).all() and (boxes[:, 1:] <= 128 + 1e-4).all()
        assert ((boxes[:, 0] >= 0) & (boxes[:, 0] <= 9)).all()
        assert ((boxes[:, 3] - boxes[:, 1]) >= 4).all()
        classes.update(int(c) for c in boxes[:, 0])
        # the last-drawn object is never occluded: its crop is exactly its CIFAR image resized to the box
        p = placements[-1]
        crop = (image[:, p.y1:p.y2, p.x1:p.x2].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        src = np.asarray(mosaic.images[p.source])
        resized = np.asarray(Image.fromarray(src).resize((p.x2 - p.x1, p.y2 - p.y1), Image.BILINEAR))
        assert np.abs(crop.astype(int) - resized.astype(int)).max() <= 1
        assert p.cls == int(mosaic.labels[p.source])
    assert len(set(counts)) >= 3 and len(classes) >= 8


def test_cifar_jpg_cache_is_real_cifar_in_class_order():
    images, labels = cifar10_jpg_arrays("test")
    assert images.shape == (10000, 32, 32, 3) and np.bincount(labels).tolist() == [1000] * 10
    raw = np.load(data_file("cifar10/cifar10_test_first_raw.npz"))
    starts = np.searchsorted(labels, np.arange(10))
    seen = np.zeros(10, dtype=int)
    errors = []
    for x, y in zip(raw["x"][:30], raw["y"][:30]):  # k-th test image of class c = test/<c>/{k:04d}.jpg
        jpg = images[starts[y] + seen[y]]
        seen[y] += 1
        errors.append(np.abs(jpg.astype(float) - x.astype(float)).mean())
    assert max(errors) < 15 and np.mean(errors) < 8  # JPEG error is ~5.8 / 255 on average
    assert len(CIFAR10_CLASSES) == 10


def _coco8_val_gt():
    ds = coco8(split="val")
    targets = []
    for i in range(len(ds)):
        _, t, _ = ds.load(i)
        targets.append(targets_to_pixels(t, 640, 640))
    return targets


def test_map_perfect_shifted_and_empty():
    targets = _coco8_val_gt()
    perfect = [torch.cat((t[:, 1:], torch.ones(len(t), 1), t[:, :1]), 1) for t in targets]
    result = detection_map(perfect, targets, num_classes=80)
    assert result["map50"] == pytest.approx(1.0) and result["map50_95"] == pytest.approx(1.0)
    # shift every box by 10% of its width: IoU ~0.82 -> still a hit at 0.5, a miss at the strict thresholds
    shifted = []
    for p in perfect:
        q = p.clone()
        dx = (q[:, 2] - q[:, 0]) * 0.1
        q[:, 0] += dx
        q[:, 2] += dx
        shifted.append(q)
    result = detection_map(shifted, targets, num_classes=80)
    assert result["map50"] == pytest.approx(1.0) and 0.3 < result["map50_95"] < 0.9
    # wrong classes find nothing; no predictions at all gives 0
    wrong = [torch.cat((p[:, :5], (p[:, 5:] + 1) % 80), 1) for p in perfect]
    assert detection_map(wrong, targets, num_classes=80)["map50"] == pytest.approx(0.0)
    assert detection_map([torch.zeros(0, 6)] * len(targets), targets, 80) == {"map50": 0.0, "map50_95": 0.0}
    # half of the boxes missing: recall is capped, AP drops
    halved = [p[: max(1, len(p) // 2)] for p in perfect]
    assert detection_map(halved, targets, num_classes=80)["map50"] < 0.95
