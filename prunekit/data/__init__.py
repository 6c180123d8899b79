"""Real datasets, by name: `load(name, split=...)` returns a ``torch.utils.data.Dataset``.

Files are read from the local data root (`prunekit.paths.data_root`); loaders keep the real download URL and
checksum for users with internet access.
"""
from __future__ import annotations

from ..registry import registry

DATASETS = registry("dataset")

DATASETS.lazy("digits", "prunekit.data.digits:digits", "scikit-learn 8x8 digits (built in, needs no files)")
DATASETS.lazy("fashion_mnist", "prunekit.data.fashion_mnist:fashion_mnist", "Fashion-MNIST from IDX files")
DATASETS.lazy("cifar10", "prunekit.data.cifar10:cifar10_jpg", "CIFAR-10 from the JPEG tarballs (train/test)")
DATASETS.lazy("cifar10_raw", "prunekit.data.cifar10:cifar10_raw", "the first 1,017 CIFAR-10 test images, raw pixels")
DATASETS.lazy("cifar10_python", "prunekit.data.cifar10:cifar10_python",
              "CIFAR-10 from the original python pickles (downloadable)")
DATASETS.lazy("coco8", "prunekit.data.detection:coco8", "COCO8 in YOLO format (4 train / 4 val images)")
DATASETS.lazy("cifar_mosaic", "prunekit.data.cifar_mosaic:cifar_mosaic",
              "detection set of real CIFAR-10 images placed on larger canvases (seeded)")
DATASETS.lazy("wikitext2", "prunekit.data.text:wikitext2", "WikiText-2 (raw) text")
DATASETS.lazy("tinyshakespeare", "prunekit.data.text:tinyshakespeare", "Tiny Shakespeare text")


def load(name: str, split: str = "test", **kwargs):
    """Load a registered dataset split."""
    return DATASETS.get(name)(split=split, **kwargs)
