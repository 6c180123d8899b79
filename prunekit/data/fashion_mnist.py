"""Fashion-MNIST from its IDX files (``apt-get install -y dataset-fashion-mnist`` puts them in
``/usr/share/datasets/fashion-mnist/``; a ``fashion-mnist/`` folder under the data root works too)."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import List, Optional

import numpy as np

from ..errors import ConfigError, DataNotFoundError
from ..paths import data_root
from .array_dataset import ImageArrayDataset
from .transforms import NormalizeSpec, build_transform

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed): magic ``00 00 <type> <ndim>``, big-endian int32 dims, data.

    Returns:
        The array with the shape stored in the header (e.g. ``[N, 28, 28]`` uint8 images or ``[N]`` labels).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataNotFoundError(f"prunekit.data.fashion_mnist: {path} is not an IDX file (bad magic)")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}i", raw[4:4 + 4 * ndim])
    dtype = np.dtype(_DTYPES[raw[2]])
    count = int(np.prod(dims)) if dims else 1
    offset = 4 + 4 * ndim
    if len(raw) - offset != count * dtype.itemsize:
        raise DataNotFoundError(f"prunekit.data.fashion_mnist: {path} holds {len(raw) - offset} data bytes, "
                                f"header promises {count * dtype.itemsize} (truncated?)")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(dims).astype(dtype.newbyteorder("="))


def search_dirs() -> List[Path]:
    """Folders searched in order: the Debian package's, then ``<data root>/fashion-mnist``, ``fashion_mnist``."""
    return [SYSTEM_DIR, data_root() / "fashion-mnist", data_root() / "fashion_mnist"]


def find_file(stem: str, dirs: Optional[List[Path]] = None) -> Path:
    """The first ``stem`` or ``stem.gz`` in `dirs`; `DataNotFoundError` naming every place looked at otherwise."""
    dirs = search_dirs() if dirs is None else dirs
    tried = []
    for folder in dirs:
        for name in (stem, stem + ".gz"):
            tried.append(folder / name)
            if tried[-1].exists():
                return tried[-1]
    raise DataNotFoundError(f"prunekit.data.fashion_mnist: missing '{stem}[.gz]'; looked for "
                            f"{', '.join(str(p) for p in tried)}. Install it with "
                            f"`apt-get install -y dataset-fashion-mnist` or put the IDX files in "
                            f"{data_root() / 'fashion-mnist'}")


def fashion_mnist(split: str = "test", augment=None, normalize: NormalizeSpec = None, limit: Optional[int] = None,
                  root: Optional[str | Path] = None) -> ImageArrayDataset:
    """Fashion-MNIST as ``([1, 28, 28] float32, label 0-9)`` items (60,000 train / 10,000 test).

    Args:
        split: ``"train"`` or ``"test"``.
        augment: a callable on ``[1, 28, 28]`` or None.
        normalize: ``"fashion_mnist"``, a ``(mean, std)`` pair, or None for 0-1 pixels.
        limit: keep only the first `limit` images.
        root: a folder to search instead of the default ones.
    """
    if split not in FILES:
        raise ConfigError(f"prunekit.data.fashion_mnist: split must be 'train' or 'test', got '{split}'")
    dirs = [Path(root)] if root is not None else None
    images = read_idx(find_file(FILES[split][0], dirs))
    labels = read_idx(find_file(FILES[split][1], dirs)).astype(np.int64)
    if images.ndim != 3 or images.shape[0] != labels.shape[0]:
        raise DataNotFoundError(f"prunekit.data.fashion_mnist: images {images.shape} and labels {labels.shape} "
                                f"do not match")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return ImageArrayDataset(np.ascontiguousarray(images[:, None]), labels, CLASSES,
                             build_transform(augment, normalize, 28), f"fashion_mnist[{split}]")
