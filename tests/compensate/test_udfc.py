"""UDFC-style compression on real pretrained CIFAR ResNets: compensation helps, the artifact is real and reloads,
groups the closed form cannot cover are reported, and the data-free path reads no data."""
import json

import pytest
import torch
from torch import nn

import prunekit
from prunekit.compensate.layers import find_layers
from prunekit.compensate.probe import probe_model
from prunekit.compensate.udfc import UDFCConfig, compress
from prunekit.errors import ConfigError
from prunekit.models import example_inputs
from prunekit.quant import load_quantized
from prunekit.quant.artifact import WEIGHTS_FILE, pack_nibbles, unpack_nibbles

from .conftest import logit_error


def test_compensation_reduces_error_on_real_images(resnet20, raw_images):
    x = example_inputs("cifar_resnet20")
    plan = prunekit.plan(resnet20, x, ratio=0.3, criterion="l1")
    errors = {}
    for arm, options in {"naive": dict(compensation="none", bias_correction=False),
                         "udfc": dict(compensation="udfc")}.items():
        result = compress(resnet20, x, UDFCConfig(bits=6, prune_uncompensable=False, **options), plan=plan)
        errors[arm] = logit_error(result.model, resnet20, raw_images)
        assert result.report["removed_channels"] > 0
    assert errors["udfc"] < 0.8 * errors["naive"]


def test_lowbit_artifact_roundtrip(resnet20, tmp_path):
    x = example_inputs("cifar_resnet20")
    for bits in (4, 6):
        result = compress(resnet20, x, UDFCConfig(keep=0.75, bits=bits))
        out = result.save(tmp_path / f"b{bits}", {"registry": "cifar_resnet20"})
        from safetensors import safe_open

        with safe_open(str(out / WEIGHTS_FILE), "pt") as f:
            keys = list(f.keys())
            dtypes = {f.get_tensor(k).dtype for k in keys if ".weight.q" in k}
        assert dtypes == ({torch.uint8} if bits <= 4 else {torch.int8})
        q, scale = result.quantized["layer1.0.conv1"]
        assert int(q.abs().max()) <= 2 ** (bits - 1) - 1
        again = load_quantized(out)
        with torch.no_grad():
            assert torch.allclose(again(x), result.model(x), atol=1e-5, rtol=1e-5)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in again.modules())  # folded before quantising
    values = torch.randint(-7, 8, (5, 3, 3), dtype=torch.int8)
    assert torch.equal(unpack_nibbles(pack_nibbles(values), (5, 3, 3)), values)


def test_residual_groups_are_pruned_uncompensated_and_reported():
    from prunekit.models.cifar_resnet import CifarResNetB

    torch.manual_seed(0)
    model = CifarResNetB(depth=8).eval()
    x = torch.randn(2, 3, 32, 32)
    result = compress(model, x, UDFCConfig(keep=0.5))
    unc = result.report["uncompensated_pruned_groups"]
    assert "conv1" in unc and "residual" in unc["conv1"]
    assert {row["group"] for row in result.report["layers"]} >= {"layer1.0.conv1", "layer2.0.conv1"}
    kept = compress(model, x, UDFCConfig(keep=0.5, prune_uncompensable=False))
    assert kept.report["uncompensated_pruned_groups"] == {}
    assert kept.model.conv1.out_channels == 16 and kept.model.layer1[0].conv1.out_channels == 8


def test_silu_is_refused_by_name():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.SiLU(),
                          nn.Conv2d(8, 4, 3, padding=1)).eval()
    x = torch.randn(2, 3, 8, 8)
    layers, refused = find_layers(model, prunekit.analyze(model, x).groups, probe_model(model, x))
    assert not layers and "silu" in refused["0"].lower()


def test_probe_follows_pooling_and_bad_config_is_refused(resnet20):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                          nn.MaxPool2d(2), nn.Conv2d(8, 4, 3, padding=1)).eval()
    x = torch.randn(2, 3, 8, 8)
    d = probe_model(model, x).inputs["4"]
    assert d.source == "1" and d.ops[0] == "relu" and "max_pool2d" in d.ops[1]
    gamma = model[1].weight.detach().double().abs()
    assert torch.allclose(d.mean, gamma / (2 * torch.pi) ** 0.5, atol=1e-9)  # beta = 0: E[ReLU] = gamma / sqrt(2 pi)
    with pytest.raises(ConfigError, match="measured"):
        compress(resnet20, example_inputs("cifar_resnet20"), UDFCConfig(moments="measured"))
    with pytest.raises(ConfigError, match="bits"):
        UDFCConfig(bits=12)


def test_data_free_path_touches_no_data(monkeypatch, tmp_path):
    """Every dataset loader raises; the CLI still compresses and the artifact loads."""
    import prunekit.data as data
    from prunekit.cli.main import main

    def refuse(*args, **kwargs):
        raise AssertionError("a dataset was read on the data-free path")

    for name in data.DATASETS.names():
        monkeypatch.setitem(data.DATASETS._entries, name, refuse)
    monkeypatch.setattr(data, "load", refuse)
    import prunekit.data.cifar10 as cifar

    for fn in ("cifar10_jpg", "cifar10_raw", "cifar10_python"):
        monkeypatch.setattr(cifar, fn, refuse)
    out = tmp_path / "r20"
    assert main(["compress", "--data-free", "--keep", "0.7", "--bits", "6", "--model", "cifar_resnet20",
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["data_used"] == {"calibration": False, "eval_images": False}
    model = load_quantized(out)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
