"""Dataset loaders on the real local data (CIFAR-10 JPEG/raw, digits, Fashion-MNIST, text) and the safe unpickler."""
from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from prunekit.data import load
from prunekit.data.cifar10 import (CLASSES, PYTHON_URL, RestrictedUnpickler, UnsafePickleError, cifar10_jpg,
                                   cifar10_python, cifar10_raw, read_python_batch)
from prunekit.data.digits import digits, split_indices
from prunekit.data.fashion_mnist import fashion_mnist, find_file, read_idx
from prunekit.data.text import tinyshakespeare, tokenize_for_perplexity, wikitext2
from prunekit.data.transforms import (CIFAR_MEAN, CIFAR_STD, RandomCrop, RandomHorizontalFlip, normalization,
                                      standard_augmentation)
from prunekit.errors import ConfigError, DataNotFoundError
from prunekit.paths import data_root


@pytest.fixture(scope="module")
def raw_npz():
    with np.load(data_root() / "cifar10" / "cifar10_test_first_raw.npz") as npz:
        return {k: npz[k] for k in npz.files}


# ------------------------------------------------------------------------------------------------ CIFAR-10 (local)

def test_jpeg_test_set_is_in_canonical_order(raw_npz):
    ds = cifar10_jpg("test", normalize=None)
    assert len(ds) == 10000
    image, label = ds[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert np.array_equal(ds.labels.numpy(), raw_npz["all_labels"])
    assert label == int(raw_npz["all_labels"][0])
    # the same pictures as the raw subset, up to JPEG loss (about 5.8/255 mean absolute error)
    raw = torch.from_numpy(raw_npz["x"]).permute(0, 3, 1, 2).float()
    mae = (ds.images[:1017].float() - raw).abs().mean().item()
    assert 4.0 < mae < 8.0
    # class-sorted order (no reordering) does not line up with the raw pictures
    unordered = cifar10_jpg("test", normalize=None, canonical_order=False)
    assert (unordered.images[:1017].float() - raw).abs().mean().item() > 30.0
    assert np.all(np.diff(unordered.labels.numpy()) >= 0)


def test_jpeg_train_set_shapes_and_class_counts():
    ds = cifar10_jpg("train", normalize="cifar", limit=None)
    assert len(ds) == 50000 and tuple(ds.images.shape) == (50000, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert np.array_equal(np.bincount(ds.labels.numpy(), minlength=10), np.full(10, 5000))
    assert ds.classes == list(CLASSES)
    limited = cifar10_jpg("train", limit=100)
    assert len(limited) == 100


def test_raw_subset_labels_and_normalisation(raw_npz):
    plain = cifar10_raw(normalize=None)
    assert len(plain) == 1017
    assert np.array_equal(plain.labels.numpy(), raw_npz["y"])
    assert np.array_equal(raw_npz["y"], raw_npz["all_labels"][:1017])
    x, _ = plain[5]
    assert torch.allclose(x * 255.0, torch.from_numpy(raw_npz["x"][5]).permute(2, 0, 1).float())
    normed = cifar10_raw(normalize="cifar")
    mean = torch.tensor(CIFAR_MEAN).view(3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(3, 1, 1)
    assert torch.allclose(normed[5][0], (x - mean) / std, atol=1e-6)
    via_registry = load("cifar10_raw", normalize=None, limit=10)
    assert len(via_registry) == 10 and torch.equal(via_registry[3][0], plain[3][0])
    with pytest.raises(ConfigError, match="only has split 'test'"):
        cifar10_raw(split="train")


def test_missing_data_file_names_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_DATA", str(tmp_path))
    with pytest.raises(DataNotFoundError) as info:
        cifar10_raw()
    assert str(tmp_path / "cifar10" / "cifar10_test_first_raw.npz") in str(info.value)
    with pytest.raises(DataNotFoundError, match="wikitext2_test.txt"):
        wikitext2("test")


# ------------------------------------------------------------------------------------------------ transforms

def test_transforms_crop_flip_and_normalisation_names():
    x = torch.rand(3, 32, 32)
    assert torch.equal(RandomHorizontalFlip(p=1.0)(x), x.flip(-1))
    assert torch.equal(RandomHorizontalFlip(p=0.0)(x), x)
    torch.manual_seed(0)
    out = RandomCrop(32, 4)(x)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    windows = [padded[:, t:t + 32, s:s + 32] for t in range(9) for s in range(9)]
    assert out.shape == (3, 32, 32) and any(torch.equal(out, w) for w in windows)
    torch.manual_seed(1)
    a = standard_augmentation()(x)
    torch.manual_seed(1)
    assert torch.equal(a, standard_augmentation()(x))
    assert normalization("imagenet")[0] == (0.485, 0.456, 0.406)
    assert normalization(None) is None
    with pytest.raises(ConfigError, match="known: cifar, fashion_mnist, imagenet"):
        normalization("cifar100")
    augmented = cifar10_raw(augment=True, normalize=None, limit=4)
    assert augmented[0][0].shape == (3, 32, 32)


# ------------------------------------------------------------------------------------------------ python batches

class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_restricted_unpickler_refuses_os_system(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "data_batch_1"
    bad.write_bytes(pickle.dumps({"data": _Exploit(marker), "labels": [0]}))
    with pytest.raises(UnsafePickleError, match=r"refusing to unpickle global '(os|posix)\.system'") as info:
        read_python_batch(bad)
    assert str(bad) in str(info.value)
    assert not marker.exists()
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        RestrictedUnpickler(__import__("io").BytesIO(pickle.dumps(eval))).load()


def _write_batch(path, data, labels, bytes_keys):
    batch = {b"data": data, b"labels": labels} if bytes_keys else {"data": data, "labels": labels}
    with open(path, "wb") as handle:
        pickle.dump(batch, handle)


def test_python_batches_read_from_hand_made_files(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.RandomState(0)
    test_data = rng.randint(0, 256, size=(6, 3072)).astype(np.uint8)
    _write_batch(folder / "test_batch", test_data, [3, 1, 4, 1, 5, 9], bytes_keys=True)
    for i in range(1, 6):
        _write_batch(folder / f"data_batch_{i}", np.full((2, 3072), i, np.uint8), [i, i], bytes_keys=False)
    ds = cifar10_python("test", root=tmp_path, normalize=None)
    assert len(ds) == 6 and ds.labels.tolist() == [3, 1, 4, 1, 5, 9]
    image, label = ds[2]
    assert image.shape == (3, 32, 32) and label == 4
    # row layout: 1024 red, then 1024 green, then 1024 blue values, each row-major 32 x 32
    assert float(image[1, 2, 7]) * 255 == pytest.approx(test_data[2, 1024 + 2 * 32 + 7])
    train = cifar10_python("train", root=folder, normalize=None)
    assert len(train) == 10 and train.labels.tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert int(train.images[9].max()) == 5


def test_python_batches_missing_without_download(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        cifar10_python("test", root=tmp_path)
    assert str(tmp_path / "cifar-10-batches-py") in str(info.value) and PYTHON_URL in str(info.value)


# ------------------------------------------------------------------------------------------------ digits

def test_digits_split_is_deterministic_and_disjoint():
    train, test = digits("train"), digits("test")
    assert (len(train), len(test)) == (1438, 359)
    idx_train, idx_test = split_indices(1797, "train"), split_indices(1797, "test")
    assert not set(idx_train) & set(idx_test) and len(set(idx_train) | set(idx_test)) == 1797
    again = digits("test")
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)
    image, label = test[0]
    assert image.shape == (1, 8, 8) and image.dtype == torch.float32 and 0 <= label <= 9
    assert float(train.images.min()) == 0.0 and float(train.images.max()) == 1.0
    assert set(test.labels.tolist()) == set(range(10))


# ------------------------------------------------------------------------------------------------ Fashion-MNIST

def _write_idx(path, array, compress):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    opener = gzip.open if compress else open
    with opener(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_idx_reader_and_missing_message(tmp_path):
    images = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images, compress=True)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([7, 2]), compress=False)
    assert np.array_equal(read_idx(tmp_path / "t10k-images-idx3-ubyte.gz"), images)
    ds = fashion_mnist("test", root=tmp_path)
    assert len(ds) == 2 and ds.labels.tolist() == [7, 2] and ds[1][0].shape == (1, 28, 28)
    with pytest.raises(DataNotFoundError) as info:
        find_file("train-images-idx3-ubyte", [tmp_path])
    assert "apt-get install -y dataset-fashion-mnist" in str(info.value)
    assert str(tmp_path / "train-images-idx3-ubyte") in str(info.value)


def test_fashion_mnist_real_files():
    try:
        ds = fashion_mnist("test")
    except DataNotFoundError as exc:
        pytest.skip(str(exc))
    assert len(ds) == 10000 and ds[0][0].shape == (1, 28, 28)
    assert ds.labels[:5].tolist() == [9, 2, 1, 1, 6]
    assert np.array_equal(np.bincount(ds.labels.numpy()), np.full(10, 1000))


# ------------------------------------------------------------------------------------------------ text

def test_text_corpora():
    test = wikitext2("test")
    assert len(test) == 1255018 and test.startswith(" \n = Robert <unk> = \n")
    assert len(wikitext2("valid")) == 1120192
    full = tinyshakespeare()
    assert full.startswith("First Citizen:") and tinyshakespeare("train") + tinyshakespeare("test") == full
    assert load("wikitext2", split="valid") == wikitext2("valid")
    with pytest.raises(ConfigError, match="'test' or 'valid'"):
        wikitext2("train")


def test_tokenize_for_perplexity_prefix_matches_full_encoding():
    try:
        from prunekit.models.hf import load_tokenizer

        tokenizer = load_tokenizer("minilm_l6")
    except Exception as exc:  # noqa: BLE001 - the tokenizer package is optional
        pytest.skip(f"MiniLM tokenizer unavailable: {exc}")
    text = wikitext2("test")[:60000]
    full = tokenize_for_perplexity(text, tokenizer)
    head = tokenize_for_perplexity(text, tokenizer, max_tokens=1000)
    assert head.dtype == torch.long and head.shape == (1000,)
    assert torch.equal(head, full[:1000])
    assert int(full[0]) != tokenizer.cls_token_id  # no special tokens added
