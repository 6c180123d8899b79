"""`WidthConfig`: validation, plan and file round trips, engine builds (residual ties, depthwise), load, widening."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import prunekit
from prunekit.errors import ConfigError
from prunekit.models import build
from prunekit.prune.plan import model_fingerprint
from prunekit.widths import WIDTH_CONFIG_KIND, WidthConfig, build_model, save_width_model

torch.set_num_threads(1)
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


class DepthwiseNet(nn.Module):
    """conv -> depthwise conv -> pointwise conv -> linear: the depthwise conv ties its input and output."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.pw = nn.Conv2d(16, 24, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(24)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        x = torch.relu(self.bn1(self.dw(x)))
        x = torch.relu(self.bn2(self.pw(x)))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = build("cifar_resnet20_b", pretrained=False).eval()
    return model, prunekit.analyze(model, X)


def test_validation_names_the_key():
    with pytest.raises(ConfigError, match=r"kept\['a'\] = 0"):
        WidthConfig(kept={"a": 0}, group_sizes={"a": 4})
    with pytest.raises(ConfigError, match=r"kept\['a'\] = 5 must lie in \(0, 4\]"):
        WidthConfig(kept={"a": 5}, group_sizes={"a": 4})
    with pytest.raises(ConfigError, match="names group 'b'"):
        WidthConfig(kept={"b": 1}, group_sizes={"a": 4})
    with pytest.raises(ConfigError, match=r"kept\['a'\] must be an integer"):
        WidthConfig(kept={"a": 1.5}, group_sizes={"a": 4})
    with pytest.raises(ConfigError, match="unknown keys"):
        WidthConfig.from_dict({"kept": {}, "group_sizes": {}, "widths": 1})
    assert WidthConfig(kept={"a": 6}, group_sizes={"a": 4}, max_scale=1.5).widened() == {"a": 2}


def test_file_round_trips(tmp_path, resnet):
    model, analysis = resnet
    config = WidthConfig.from_fractions(analysis, {"conv1": 0.5, "layer2.0.conv1": 0.3}, model=model, inputs=X,
                                        method="test")
    assert config.kept["conv1"] == 8 and config.kept["layer2.0.conv1"] == 10 and config.kept["layer3.0.conv1"] == 64
    assert config.fractions()["conv1"] == 0.5 and config.model_spec == {"registry": "cifar_resnet20_b"}
    for name in ("w.yaml", "w.json"):
        config.save(tmp_path / name)
        assert WidthConfig.load(tmp_path / name) == config
    assert WidthConfig.from_json(config.to_json()) == config
    with pytest.raises(ConfigError, match="group 'fc' cannot be resized"):
        WidthConfig.from_fractions(analysis, {"fc": 0.5})


def test_from_plan_and_to_plan_agree(resnet):
    model, analysis = resnet
    plan = prunekit.plan(model, X, ratio=0.4, criterion="l1", allocator="uniform")
    config = WidthConfig.from_plan(plan)
    assert config.kept == {g: s - len(plan.removed.get(g, [])) for g, s in plan.group_sizes.items()}
    again = config.to_plan(analysis)
    assert {g: len(v) for g, v in again.removed.items()} == {g: len(v) for g, v in plan.removed.items() if v}
    assert again.provenance["kind"] == WIDTH_CONFIG_KIND and again.provenance["from_scratch"] is True
    # the kept units are the first ones (a fresh network does not care which)
    assert all(v == list(range(plan.group_sizes[g] - len(v), plan.group_sizes[g])) for g, v in again.removed.items())


def test_build_residual_network_ties_and_fresh_init(tmp_path, resnet):
    model, analysis = resnet
    config = WidthConfig.from_fractions(analysis, {"layer2.0.downsample.0": 0.5, "layer1.1.conv1": 0.25},
                                        model=model, inputs=X)
    small = build_model(config, model, X, seed=3)
    # every member of the residual group of stage 2 has 16 channels: block outputs, shortcut, next inputs
    assert small.layer2[0].downsample[0].out_channels == 16
    assert [small.layer2[i].conv2.out_channels for i in range(3)] == [16, 16, 16]
    assert [small.layer2[i].bn2.num_features for i in range(3)] == [16, 16, 16]
    assert small.layer2[1].conv1.in_channels == 16 and small.layer3[0].conv1.in_channels == 16
    assert small.layer1[1].conv1.out_channels == 4 and small.layer1[1].conv2.in_channels == 4
    assert small(X).shape == (2, 10) and small.training
    # freshly initialised (not the original's weights), reproducible from the seed
    assert not torch.equal(small.layer3[0].conv1.weight, model.layer3[0].conv1.weight)
    assert torch.equal(build_model(config, model, X, seed=3).layer3[0].conv1.weight, small.layer3[0].conv1.weight)
    assert model.layer2[0].downsample[0].out_channels == 32  # the original is untouched
    # the paper's "standard Kaiming init of the new shape": std sqrt(2 / fan_in) of the NEW fan-in
    kaiming = build_model(config, model, X, seed=3, init="kaiming")
    w = kaiming.layer2[1].conv1.weight.detach()  # fan-in 16 x 3 x 3: the stage-2 stream is 16 wide
    assert w.shape[1] == 16 and float(w.std()) == pytest.approx(math.sqrt(2 / 144), rel=0.1)
    with pytest.raises(ConfigError, match="init must be one of"):
        build_model(config, model, X, init="xavier")
    # saved in the plan format: prunekit.load rebuilds it from the registry name alone
    save_width_model(small, tmp_path / "out")
    again = prunekit.load(tmp_path / "out")
    assert torch.allclose(again.eval()(X), small.eval()(X), atol=1e-6)
    assert WidthConfig.load(tmp_path / "out").kept == config.kept
    raw = prunekit.PruningPlan.load(tmp_path / "out" / "plan.json")
    assert raw.provenance["kind"] == WIDTH_CONFIG_KIND and raw.model_fingerprint == model_fingerprint(model)


def test_build_depthwise_network_and_widening():
    torch.manual_seed(0)
    model = DepthwiseNet().eval()
    analysis = prunekit.analyze(model, X)
    sizes = {g.id: g.size for g in analysis.groups}
    assert sizes == {"stem": 16, "pw": 24, "fc": 10}  # the depthwise conv is tied into the stem's group
    config = WidthConfig.from_fractions(analysis, {"stem": 0.5, "pw": 0.5}, model=model, inputs=X)
    small = build_model(config, model, X, seed=0)
    assert (small.dw.in_channels, small.dw.out_channels, small.dw.groups) == (8, 8, 8)
    assert small.pw.in_channels == 8 and small.pw.out_channels == 12 and small.fc.in_features == 12
    assert small(X).shape == (2, 10)
    # widening: plain conv/linear/BN members grow; the depthwise member is refused by name
    wide = WidthConfig.from_fractions(analysis, {"pw": 1.5}, model=model, inputs=X, max_scale=2.0)
    big = build_model(wide, model, X, seed=0)
    assert big.pw.out_channels == 36 and big.bn2.num_features == 36 and big.fc.in_features == 36
    assert float(big.bn2.running_var.min()) == 1.0 and big(X).shape == (2, 10)
    with pytest.raises(ConfigError, match="only remove units"):
        wide.to_plan(analysis)
    with pytest.raises(ConfigError, match="wider than the original"):
        save_width_model(big, "unused")
    with pytest.raises(ConfigError, match="depthwise convolution 'dw'"):
        build_model(WidthConfig.from_fractions(analysis, {"stem": 1.5}, model=model, inputs=X, max_scale=2.0),
                    model, X)


def test_build_refuses_another_model(resnet):
    model, analysis = resnet
    config = WidthConfig.full(analysis, model=model, inputs=X)
    other = build("cifar_resnet56_b", pretrained=False)
    with pytest.raises(ConfigError, match="made for another model"):
        build_model(config, other, X)
