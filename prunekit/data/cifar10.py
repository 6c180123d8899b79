"""CIFAR-10 from three sources: the local JPEG tarballs, the raw-pixel test subset, and the original python batches.

* `cifar10_jpg` reads ``cifar10/cifar10_jpg_{split}.tar.gz`` under the data root. The first call verifies the
  archive's sha256 prefix, decodes every JPEG once (tarfile + PIL) and caches the uint8 pixels as ``.npz`` under
  `prunekit.paths.cache_root()`; later calls read the cache. The test set is put back into canonical CIFAR-10 order
  with ``all_labels`` from the raw npz: the k-th image of class c in canonical order is ``test/<c>/{k:04d}.jpg``.
* `cifar10_raw` reads the first 1,017 test images in their original pixels (``cifar10_test_first_raw.npz``).
* `cifar10_python` reads the original ``cifar-10-python.tar.gz`` batches (downloadable) with a restricted unpickler
  that accepts only the numpy reconstruction functions a batch needs.

Every loader returns an `ImageArrayDataset` of ``([3, 32, 32] float32, label)`` items.
"""
from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from ..errors import ConfigError, DataNotFoundError, PrunekitError
from ..paths import cache_root, data_file, data_root
from .array_dataset import ImageArrayDataset
from .transforms import NormalizeSpec, build_transform

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

SHA256_PREFIX = {
    "cifar10/cifar10_jpg_train.tar.gz": "5b3a6541fc51bdca",
    "cifar10/cifar10_jpg_test.tar.gz": "a29a9d995b01aac9",
    "cifar10/cifar10_test_first_raw.npz": "afa801697a5138a2",
}
RAW_SUBSET = "cifar10/cifar10_test_first_raw.npz"

PYTHON_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
PYTHON_MD5 = "c58f30108f718f92721af3b95e74349a"
PYTHON_DIR = "cifar-10-batches-py"
PYTHON_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


class UnsafePickleError(PrunekitError, pickle.UnpicklingError):
    """A pickle asked for a global outside the CIFAR batch allow-list."""


def _file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Path, prefix: str) -> None:
    """Raise `DataNotFoundError` when the sha256 of `path` does not start with `prefix`."""
    actual = _file_digest(path, "sha256")
    if not actual.startswith(prefix):
        raise DataNotFoundError(f"prunekit.data.cifar10: {path} is corrupted or not the expected file "
                                f"(sha256 {actual[:16]}..., expected prefix {prefix})")


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    from ..io import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    atomic_write(path, write)


def _decode_jpg_tarball(path: Path, split: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode ``<split>/<class>/NNNN.jpg`` members. Returns x ``[N, 32, 32, 3]`` uint8, y ``[N]``, index-in-class
    ``[N]``, sorted by (class, index)."""
    from PIL import Image

    items = []
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 3 or parts[0] != split or not parts[2].endswith(".jpg"):
                continue
            if parts[1] not in CLASSES:
                raise DataNotFoundError(f"prunekit.data.cifar10: unexpected class folder '{parts[1]}' in {path}")
            data = tar.extractfile(member).read()
            pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.uint8)
            items.append((CLASSES.index(parts[1]), int(parts[2][:-4]), pixels))
    if not items:
        raise DataNotFoundError(f"prunekit.data.cifar10: no '{split}/<class>/NNNN.jpg' images in {path}")
    items.sort(key=lambda item: (item[0], item[1]))
    x = np.stack([item[2] for item in items])
    y = np.array([item[0] for item in items], dtype=np.int64)
    k = np.array([item[1] for item in items], dtype=np.int64)
    return x, y, k


def _jpg_arrays(split: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels, labels and index-in-class of the JPEG split, decoding once and caching the result."""
    relative = f"cifar10/cifar10_jpg_{split}.tar.gz"
    prefix = SHA256_PREFIX[relative]
    cache = cache_root() / "cifar10" / f"cifar10_jpg_{split}_{prefix}.npz"
    if cache.exists():
        with np.load(cache) as npz:
            return npz["x"], npz["y"], npz["k"]
    path = data_file(relative, what="CIFAR-10 JPEG archive")
    verify_sha256(path, prefix)
    x, y, k = _decode_jpg_tarball(path, split)
    _save_npz(cache, x=x, y=y, k=k)
    return x, y, k


def canonical_test_permutation(y: np.ndarray, k: np.ndarray, all_labels: np.ndarray) -> np.ndarray:
    """Indices that put class-sorted JPEG test images into canonical order.

    Args:
        y: ``[N]`` class of each decoded image. k: ``[N]`` its file number within the class folder.
        all_labels: ``[N]`` the canonical label sequence.

    Returns:
        ``perm [N]`` with ``y[perm] == all_labels``: canonical image i is file ``k`` = (number of earlier
        occurrences of ``all_labels[i]``) of class ``all_labels[i]``.
    """
    if len(y) != len(all_labels) or np.any(np.bincount(y, minlength=10) != np.bincount(all_labels, minlength=10)):
        raise DataNotFoundError("prunekit.data.cifar10: JPEG test set class counts do not match all_labels")
    position: Dict[Tuple[int, int], int] = {(int(c), int(j)): i for i, (c, j) in enumerate(zip(y, k))}
    seen = np.zeros(10, dtype=np.int64)
    perm = np.empty(len(all_labels), dtype=np.int64)
    for i, label in enumerate(all_labels):
        key = (int(label), int(seen[label]))
        if key not in position:
            raise DataNotFoundError(f"prunekit.data.cifar10: missing test/{CLASSES[key[0]]}/{key[1]:04d}.jpg")
        perm[i] = position[key]
        seen[label] += 1
    return perm


def _raw_subset() -> Dict[str, np.ndarray]:
    path = data_file(RAW_SUBSET, what="CIFAR-10 raw test subset")
    with np.load(path) as npz:
        return {name: npz[name] for name in ("x", "y", "all_labels")}


def _dataset(x_nhwc: np.ndarray, y: np.ndarray, augment, normalize, limit, name) -> ImageArrayDataset:
    if limit is not None:
        x_nhwc, y = x_nhwc[:limit], y[:limit]
    images = np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))
    return ImageArrayDataset(images, y, CLASSES, build_transform(augment, normalize, 32), name)


def cifar10_jpg(split: str = "test", augment=None, normalize: NormalizeSpec = "cifar", limit: Optional[int] = None,
                canonical_order: bool = True) -> ImageArrayDataset:
    """CIFAR-10 from the JPEG tarballs (lossy copy: about 5.8/255 mean pixel error against the originals).

    Args:
        split: ``"train"`` (50,000 images, ordered by class then file number) or ``"test"`` (10,000).
        augment: None, True / ``"standard"`` (random crop 32 pad 4 + horizontal flip) or a callable on ``[3,32,32]``.
        normalize: ``"cifar"``, ``"imagenet"``, a ``(mean, std)`` pair, or None for 0-1 pixels.
        limit: keep only the first `limit` images (after reordering).
        canonical_order: for the test split, reorder to the canonical CIFAR-10 test order (needs the raw npz).

    Returns:
        An `ImageArrayDataset` of ``([3, 32, 32] float32, int)`` items.
    """
    if split not in ("train", "test"):
        raise ConfigError(f"prunekit.data.cifar10: split must be 'train' or 'test', got '{split}'")
    x, y, k = _jpg_arrays(split)
    if split == "test" and canonical_order:
        perm = canonical_test_permutation(y, k, _raw_subset()["all_labels"])
        x, y = x[perm], y[perm]
    return _dataset(x, y, augment, normalize, limit, f"cifar10_jpg[{split}]")


def cifar10_raw(split: str = "test", augment=None, normalize: NormalizeSpec = "cifar",
                limit: Optional[int] = None) -> ImageArrayDataset:
    """The first 1,017 CIFAR-10 test images in their original pixels (comparable with published accuracies)."""
    if split != "test":
        raise ConfigError(f"prunekit.data.cifar10: the raw subset only has split 'test', got '{split}'")
    raw = _raw_subset()
    return _dataset(raw["x"], raw["y"], augment, normalize, limit, "cifar10_raw[test]")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers, bytes, numbers and numpy arrays; refuses every other global.

    Only these globals resolve (to objects chosen here, never imported by name): ``numpy.core.multiarray._reconstruct``
    (also spelled ``numpy._core.multiarray._reconstruct`` by numpy 2), ``numpy.ndarray`` and ``numpy.dtype``.
    """

    def find_class(self, module: str, name: str):
        try:
            from numpy._core.multiarray import _reconstruct
        except ImportError:  # numpy < 2
            from numpy.core.multiarray import _reconstruct

        allowed = {
            ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
        }
        if (module, name) not in allowed:
            raise UnsafePickleError(f"prunekit.data.cifar10: refusing to unpickle global '{module}.{name}': a CIFAR "
                                    f"batch holds only dicts, lists, bytes and numpy arrays")
        return allowed[(module, name)]


def read_python_batch(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch safely. Returns x ``[N, 3, 32, 32]`` uint8 and y ``[N]`` int64."""
    with open(path, "rb") as handle:
        try:
            batch = RestrictedUnpickler(handle, encoding="bytes").load()
        except UnsafePickleError as exc:
            raise UnsafePickleError(f"{exc} (file {path})") from None
    if not isinstance(batch, dict):
        raise DataNotFoundError(f"prunekit.data.cifar10: {path} is not a CIFAR batch (a {type(batch).__name__})")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise DataNotFoundError(f"prunekit.data.cifar10: {path} lacks 'data'/'labels' (keys {sorted(batch)})")
    data = np.asarray(batch["data"], dtype=np.uint8)
    return data.reshape(-1, 3, 32, 32), np.asarray(batch["labels"], dtype=np.int64)


def _python_folder(root: Path) -> Optional[Path]:
    for folder in (root / PYTHON_DIR, root):
        if all((folder / b).exists() for batches in PYTHON_BATCHES.values() for b in batches):
            return folder
    return None


def download_python(root: Path) -> Path:
    """Download ``cifar-10-python.tar.gz`` into `root`, check its md5, and extract the batch files only."""
    import urllib.request

    root.mkdir(parents=True, exist_ok=True)
    archive = root / "cifar-10-python.tar.gz"
    if not archive.exists() or _file_digest(archive, "md5") != PYTHON_MD5:
        from ..io import atomic_write

        atomic_write(archive, lambda tmp: urllib.request.urlretrieve(PYTHON_URL, tmp))
    if _file_digest(archive, "md5") != PYTHON_MD5:
        raise DataNotFoundError(f"prunekit.data.cifar10: {archive} from {PYTHON_URL} fails its md5 check")
    wanted = {f"{PYTHON_DIR}/{b}" for batches in PYTHON_BATCHES.values() for b in batches}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            if member.name in wanted and member.isfile():
                target = root / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
    return root / PYTHON_DIR


def cifar10_python(split: str = "test", root: Optional[str | Path] = None, download: bool = False, augment=None,
                   normalize: NormalizeSpec = "cifar", limit: Optional[int] = None) -> ImageArrayDataset:
    """CIFAR-10 from the original python batches (exact pixels, canonical order).

    Args:
        split: ``"train"`` (data_batch_1..5, 50,000 images) or ``"test"`` (test_batch, 10,000).
        root: a folder holding ``cifar-10-batches-py/`` (or the batch files themselves); default
            ``<data root>/cifar10``.
        download: fetch ``PYTHON_URL`` (md5 ``PYTHON_MD5``) into `root` when the batches are missing.
        augment, normalize, limit: as in `cifar10_jpg`.
    """
    if split not in PYTHON_BATCHES:
        raise ConfigError(f"prunekit.data.cifar10: split must be 'train' or 'test', got '{split}'")
    root = Path(root) if root is not None else data_root() / "cifar10"
    folder = _python_folder(root)
    if folder is None:
        if not download:
            raise DataNotFoundError(f"prunekit.data.cifar10: CIFAR-10 python batches not found in {root / PYTHON_DIR} "
                                    f"(or {root}); pass download=True to fetch {PYTHON_URL}")
        folder = download_python(root)
    parts = [read_python_batch(folder / name) for name in PYTHON_BATCHES[split]]
    x = np.concatenate([p[0] for p in parts]).transpose(0, 2, 3, 1)
    y = np.concatenate([p[1] for p in parts])
    return _dataset(x, y, augment, normalize, limit, f"cifar10_python[{split}]")
