"""CNN / ViT reference models: strict checkpoint loading, clear checkpoint errors, real CIFAR-10 accuracy, shapes."""
from __future__ import annotations

import copy
import pickle
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.overrides import TorchFunctionMode

from prunekit.errors import CheckpointError
from prunekit.io import load_tensors, safetensors_metadata
from prunekit.models import build, info
from prunekit.models import cifar_resnet, cifar_shufflenetv2, cifar_vit
from prunekit.paths import data_file

torch.set_num_threads(2)


def _weights(key: str):
    """Path of a local checkpoint under the data root."""
    return data_file(key)


@pytest.fixture(scope="module")
def cifar_raw():
    """The first 1,017 CIFAR-10 test images: x float [1017, 3, 32, 32] in [0, 1], y long [1017]."""
    z = np.load(data_file("cifar10/cifar10_test_first_raw.npz"))
    x = torch.from_numpy(z["x"]).permute(0, 3, 1, 2).float() / 255.0
    return x, torch.from_numpy(z["y"]).long()


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, mean, std) -> float:
    xn = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(xn[i:i + 256]).argmax(1) for i in range(0, len(xn), 256)])
    return (pred == y).float().mean().item()


# ---------------------------------------------------------------- strict loading


@pytest.mark.parametrize("depth", [20, 32, 44, 56])
def test_option_a_checkpoints_load_strictly(depth):
    model = build(f"cifar_resnet{depth}")
    raw = load_tensors(_weights(cifar_resnet.OPTION_A_WEIGHTS[depth]))["state_dict"]
    own = model.state_dict()
    for key, value in raw.items():
        assert torch.equal(own[key[len("module."):]], value), key
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == depth - 1  # plus the linear head = depth weighted layers
    assert sum(p.numel() for p in model.parameters()) == sum(v.numel() for k, v in raw.items() if "running" not in k)


def test_option_b_and_vit_load_strictly():
    path_b = _weights(cifar_resnet.OPTION_B_WEIGHTS)
    model_b = build("cifar_resnet56_b")
    ref = load_file(str(path_b))
    assert set(model_b.state_dict()) == set(ref)
    assert torch.equal(model_b.layer2[0].downsample[0].weight, ref["layer2.0.downsample.0.weight"])
    assert model_b.layer1[0].downsample is None and model_b.fc.out_features == 10
    assert float(safetensors_metadata(path_b)["acc"]) == pytest.approx(93.88)

    vit = build("cifar_vit")
    ref = load_tensors(_weights(cifar_vit.VIT_WEIGHTS))
    assert set(vit.state_dict()) == set(ref)
    assert torch.equal(vit.mlp_head[1].weight, ref["mlp_head.1.weight"])
    assert sum(p.numel() for p in vit.parameters()) == 811_146


def test_renamed_or_missing_keys_raise_checkpoint_error_naming_the_key(tmp_path):
    raw = load_tensors(_weights(cifar_resnet.OPTION_A_WEIGHTS[20]))
    state = dict(raw["state_dict"])
    state["module.layer1.0.convX.weight"] = state.pop("module.layer1.0.conv1.weight")
    bad_a = tmp_path / "renamed.th"
    torch.save({"state_dict": state, "best_prec1": 0.0}, bad_a)
    with pytest.raises(CheckpointError, match=r"layer1\.0\.conv1\.weight") as err:
        cifar_resnet.resnet20(weights=bad_a)
    assert "layer1.0.convX.weight" in str(err.value) and "renamed.th" in str(err.value)

    ref = load_file(str(_weights(cifar_resnet.OPTION_B_WEIGHTS)))
    del ref["layer3.0.downsample.1.running_var"]
    bad_b = tmp_path / "missing.safetensors"
    save_file(ref, str(bad_b))
    with pytest.raises(CheckpointError, match=r"layer3\.0\.downsample\.1\.running_var"):
        cifar_resnet.resnet56_b(weights=bad_b)

    vit_state = dict(load_tensors(_weights(cifar_vit.VIT_WEIGHTS)))
    vit_state["head.bias"] = vit_state.pop("mlp_head.1.bias")
    bad_v = tmp_path / "vit.pth"
    torch.save(vit_state, bad_v)
    with pytest.raises(CheckpointError, match=r"mlp_head\.1\.bias"):
        cifar_vit.vit(weights=bad_v)


def test_shape_mismatch_and_non_checkpoint_raise(tmp_path):
    with pytest.raises(CheckpointError, match=r"linear\.weight"):
        cifar_resnet.resnet20(weights=_weights(cifar_resnet.OPTION_A_WEIGHTS[20]), num_classes=100)
    plain = tmp_path / "plain.th"
    torch.save({"conv1.weight": torch.zeros(1)}, plain)
    with pytest.raises(CheckpointError, match="state_dict"):
        cifar_resnet.resnet20(weights=plain)


@pytest.mark.parametrize("suffix,factory", [
    (".th", cifar_resnet.resnet56), (".safetensors", cifar_resnet.resnet56_b), (".pth", cifar_vit.vit),
])
def test_corrupted_file_raises_checkpoint_error(tmp_path, suffix, factory):
    path = tmp_path / f"corrupt{suffix}"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError, match="corrupt"):
        factory(weights=path)


# ---------------------------------------------------------------- accuracy on real CIFAR-10


@pytest.mark.parametrize("name,low,high", [
    ("cifar_resnet20", 0.915, 1.0), ("cifar_resnet56", 0.925, 1.0), ("cifar_resnet56_b", 0.93, 1.0),
    ("cifar_vit", 0.68, 0.74),
])
def test_pretrained_accuracy_on_raw_cifar10(cifar_raw, name, low, high):
    x, y = cifar_raw
    meta = info(name)
    acc = _accuracy(build(name), x, y, meta.mean, meta.std)
    assert low <= acc <= high, f"{name}: accuracy {acc:.4f} outside [{low}, {high}]"


def test_wrong_normalisation_hurts(cifar_raw):
    """Option-A weights were trained with ImageNet statistics; CIFAR statistics give a measurably different model."""
    x, y = cifar_raw
    model = build("cifar_resnet20")
    right = _accuracy(model, x[:256], y[:256], info("cifar_resnet20").mean, info("cifar_resnet20").std)
    none = _accuracy(model, x[:256], y[:256], (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert right > none + 0.2


# ---------------------------------------------------------------- architectures without weights


@pytest.mark.parametrize("name,in_shape,n_params", [
    ("cifar_vgg16", (3, 32, 32), (14.5e6, 15.0e6)), ("cifar_vgg19", (3, 32, 32), (19.8e6, 20.3e6)),
    ("cifar_mobilenetv2", (3, 32, 32), (2.1e6, 2.4e6)), ("cifar_shufflenetv2", (3, 32, 32), (1.1e6, 1.4e6)),
])
def test_unweighted_models_warn_and_run(name, in_shape, n_params):
    with pytest.warns(UserWarning, match="no pretrained weights"):
        model = build(name, pretrained=True)
    model.eval()
    assert info(name).input_shape == in_shape
    with torch.no_grad():
        out = model(torch.randn(2, *in_shape))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert n_params[0] <= sum(p.numel() for p in model.parameters()) <= n_params[1]


def test_digits_cnn_shape_and_size():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = build("digits_cnn")
    out = model.eval()(torch.randn(5, *info("digits_cnn").input_shape))
    assert out.shape == (5, 10)
    assert 20_000 <= sum(p.numel() for p in model.parameters()) <= 80_000


def test_resnet110_warns_and_has_110_layers():
    with pytest.warns(UserWarning, match="ResNet-110"):
        model = build("cifar_resnet110")
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) == 109
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_option_a_shortcut_pads_and_pickles():
    model = build("cifar_resnet20").eval()
    shortcut = model.layer2[0].shortcut
    assert isinstance(shortcut, cifar_resnet.PadShortcut) and not list(shortcut.parameters())
    x = torch.randn(2, 16, 32, 32)
    y = shortcut(x)
    assert y.shape == (2, 32, 16, 16)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2]) and not y[:, :8].any() and not y[:, 24:].any()
    inputs = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(inputs)
        for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
            assert torch.equal(clone(inputs), ref)


# ---------------------------------------------------------------- ShuffleNetV2 split and shuffle


class _RecordFunctions(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def test_channel_shuffle_permutes_channels():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert cifar_shufflenetv2.channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    x = torch.arange(12.0).view(1, 12, 1, 1).expand(2, 12, 3, 3).contiguous()
    out = cifar_shufflenetv2.channel_shuffle(x, 3)
    assert out[1, :, 2, 1].tolist() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]


def test_shuffle_units_split_and_shuffle():
    unit = cifar_shufflenetv2.ShuffleUnit(8, 8, 1).eval()
    x = torch.randn(2, 8, 5, 5)
    with _RecordFunctions() as rec, torch.no_grad():
        out = unit(x)
    assert {"chunk", "cat", "view", "transpose", "reshape"} <= set(rec.names)
    assert torch.equal(out[:, 0::2], x[:, :4])  # untouched half lands on even positions after the shuffle
    assert not torch.equal(out[:, 1::2], x[:, 4:])
    down = cifar_shufflenetv2.ShuffleUnit(8, 16, 2).eval()
    assert down(x).shape == (2, 16, 3, 3)
    model = cifar_shufflenetv2.shufflenetv2(pretrained=False, width_mult=0.5)
    units = [m for m in model.modules() if isinstance(m, cifar_shufflenetv2.ShuffleUnit)]
    assert sorted({u.stride for u in units}) == [1, 2] and len(units) == 16


# ---------------------------------------------------------------- widths come from tensors, not constants


def test_forwards_follow_module_widths():
    vgg = build("cifar_vgg16", pretrained=False).eval()
    convs = [i for i, m in enumerate(vgg.features) if isinstance(m, torch.nn.Conv2d)]
    last = convs[-1]
    old = vgg.features[last]
    vgg.features[last] = torch.nn.Conv2d(old.in_channels, 100, 3, padding=1, bias=False)
    vgg.features[last + 1] = torch.nn.BatchNorm2d(100)
    vgg.classifier = torch.nn.Linear(100, 10)
    assert vgg(torch.randn(2, 3, 32, 32)).shape == (2, 10)

    small = cifar_vit.CifarViT(dim=64, depth=2, heads=4, mlp_dim=96).eval()
    assert small(torch.randn(3, 3, 32, 32)).shape == (3, 10)
