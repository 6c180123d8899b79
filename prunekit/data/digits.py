"""The scikit-learn 8x8 handwritten digits (1,797 images, built into scikit-learn: needs no files)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import ConfigError
from .array_dataset import ImageArrayDataset
from .transforms import NormalizeSpec, build_transform

SPLIT_SEED = 0
TRAIN_FRACTION = 0.8


def split_indices(n: int, split: str, seed: int = SPLIT_SEED) -> np.ndarray:
    """Deterministic 80/20 split: a seeded permutation of ``range(n)``; train takes the first 80%.

    Returns:
        ``[n_split]`` int64 indices, sorted ascending.
    """
    if split not in ("train", "test"):
        raise ConfigError(f"prunekit.data.digits: split must be 'train' or 'test', got '{split}'")
    perm = np.random.RandomState(seed).permutation(n)
    cut = int(round(TRAIN_FRACTION * n))
    return np.sort(perm[:cut] if split == "train" else perm[cut:])


def digits(split: str = "test", augment=None, normalize: NormalizeSpec = None,
           limit: Optional[int] = None) -> ImageArrayDataset:
    """The 8x8 digits as ``([1, 8, 8] float32 in 0-1, label 0-9)`` items.

    Args:
        split: ``"train"`` (1,438 images) or ``"test"`` (359), a fixed seeded 80/20 split.
        augment: a callable on ``[1, 8, 8]`` or None (the standard CIFAR crop is not meant for 8x8 digits).
        normalize: a ``(mean, std)`` pair or None (pixels stay 0-1, which `digits_cnn` expects).
        limit: keep only the first `limit` images of the split.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    index = split_indices(len(bunch.target), split)
    if limit is not None:
        index = index[:limit]
    images = (bunch.images[index] / 16.0).astype(np.float32)[:, None]
    labels = bunch.target[index].astype(np.int64)
    return ImageArrayDataset(images, labels, [str(d) for d in range(10)], build_transform(augment, normalize, 8),
                             f"digits[{split}]")
