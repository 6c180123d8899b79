"""PreCropping: SynExp budgets, densities -> multipliers (ties), the density sources, masks with exact densities."""
from __future__ import annotations

import math

import pytest
import torch

import prunekit
from prunekit.errors import ConfigError
from prunekit.models import build
from prunekit.widths import build_model
from prunekit.widths.precrop import (DENSITIES, PreCropConfig, apply_weight_masks, fold_weight_masks,
                                     global_topk_masks, masked_densities, multipliers_from_densities, precrop,
                                     random_masks, renormalise, synexp_densities, total, weighted_layers)

from .test_width_config import DepthwiseNet

torch.set_num_threads(1)
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = build("cifar_resnet20_b", pretrained=False).eval()
    analysis = prunekit.analyze(model, X)
    return model, analysis, weighted_layers(model, analysis, X)


def test_layers_carry_group_exponents(resnet):
    _, _, layers = resnet
    by = {layer.name: layer for layer in layers}
    assert by["conv1"].groups == {"conv1": 1} and by["conv1"].weights == 432 and by["conv1"].macs == 432 * 1024
    # the residual stream of stage 3 feeds the classifier; its outputs (the classes) are fixed
    assert by["fc"].groups == {"layer3.0.downsample.0": 1}
    assert by["layer2.1.conv2"].groups == {"layer2.0.downsample.0": 1, "layer2.1.conv1": 1}
    dw = DepthwiseNet().eval()
    dw_layers = {x.name: x for x in weighted_layers(dw, prunekit.analyze(dw, X), X)}
    assert dw_layers["dw"].groups == {"stem": 1}  # depthwise: p = alpha, not alpha^2
    assert dw_layers["pw"].groups == {"pw": 1, "stem": 1}


def test_synexp_water_filling_meets_the_budget(resnet):
    _, _, layers = resnet
    p = synexp_densities(layers, keep_params=0.3)
    used = sum(p[x.name] * x.weights for x in layers)
    assert used == pytest.approx(0.3 * total(layers), rel=1e-6)
    # KKT: every layer below the cap keeps the same number of weights; capped layers are smaller than that
    kept = [p[x.name] * x.weights for x in layers if p[x.name] < 1 - 1e-9]
    assert kept and max(kept) == pytest.approx(min(kept), rel=1e-6)
    assert all(x.weights <= kept[0] * (1 + 1e-6) for x in layers if p[x.name] >= 1 - 1e-9)
    pm = synexp_densities(layers, keep_macs=0.4)
    assert sum(pm[x.name] * x.macs for x in layers) == pytest.approx(0.4 * total(layers, None, "macs"), rel=1e-6)
    both = synexp_densities(layers, keep_params=0.5, keep_macs=0.4)
    params = sum(both[x.name] * x.weights for x in layers) / total(layers)
    macs = sum(both[x.name] * x.macs for x in layers) / total(layers, None, "macs")
    assert params <= 0.5 * (1 + 1e-6) and macs <= 0.4 * (1 + 1e-6)
    assert max(params / 0.5, macs / 0.4) == pytest.approx(1.0, abs=1e-4)  # one budget is tight
    with pytest.raises(ConfigError, match="synexp: give keep_params"):
        synexp_densities(layers)


def test_densities_to_multipliers_recovers_tied_widths(resnet):
    _, analysis, layers = resnet
    sizes = {g.id: g.size for g in analysis.groups}
    gen = torch.Generator().manual_seed(1)
    truth = {g: 0.2 + 0.8 * float(torch.rand(1, generator=gen)) for g in {g for x in layers for g in x.groups}}
    densities = {x.name: x.scale(truth) for x in layers}
    alpha = multipliers_from_densities(layers, densities, sizes)
    assert set(alpha) == set(truth)
    for g, a in truth.items():
        assert alpha[g] == pytest.approx(a, rel=1e-6)  # one multiplier per group, shared by all its members
    # depthwise: p_dw = alpha_stem and p_pw = alpha_stem * alpha_pw
    dw = DepthwiseNet().eval()
    an = prunekit.analyze(dw, X)
    dl = weighted_layers(dw, an, X)
    got = multipliers_from_densities(dl, {"stem": 0.5, "dw": 0.5, "pw": 0.25, "fc": 0.5},
                                     {g.id: g.size for g in an.groups})
    assert got == pytest.approx({"stem": 0.5, "pw": 0.5}, rel=1e-6)
    # clipping then re-normalising restores the budget
    scaled = renormalise(layers, {g: 1.0 for g in truth}, sizes, keep_params=0.25)
    assert total(layers, scaled) / total(layers) == pytest.approx(0.25, rel=1e-6)


@pytest.mark.parametrize("source", ["synexp", "snip", "grasp", "synflow", "uniform"])
def test_precrop_builds_a_network_at_the_budget(resnet, source):
    model, analysis, layers = resnet
    batch = (torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(2)), torch.arange(16) % 10)
    cfg = PreCropConfig(density=source, keep_params=0.4, synflow_iterations=5)
    result = precrop(model, X, cfg, batch=batch, analysis=analysis)
    assert abs(result.facts["params_match_error"]) < 0.03
    small = build_model(result.config, model, X, seed=0)
    conv_linear = sum(m.weight.numel() for m in small.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    assert conv_linear / total(layers) == pytest.approx(result.facts["params_fraction"], rel=1e-9)
    assert result.config.provenance["density"] == source
    if source in ("snip", "grasp", "synflow"):
        kept = sum(int(m.sum()) for m in result.masks.values())
        assert kept == round(0.4 * total(layers))  # global top-d, exactly
        assert result.densities == pytest.approx({n: float(m.float().mean()) for n, m in result.masks.items()})


def test_precrop_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="crop: density must be"):
        PreCropConfig(density="magic")
    with pytest.raises(ConfigError, match="crop: keep_params must lie in"):
        PreCropConfig(keep_params=1.0)
    with pytest.raises(ConfigError, match="crop: density 'snip' keeps a fraction"):
        PreCropConfig(density="snip", keep_params=None, keep_macs=0.5)
    assert PreCropConfig(keep_params=1.0, reconfigure=True).scale_limit == 2.0
    assert {"snip", "grasp", "synflow", "synexp"} <= set(DENSITIES.names())


def test_reconfigure_widens_under_the_same_budget(resnet):
    model, analysis, layers = resnet
    result = precrop(model, X, PreCropConfig(density="synexp", keep_params=1.0, reconfigure=True), analysis=analysis)
    assert result.config.widened() and abs(result.facts["params_match_error"]) < 0.03
    wide = build_model(result.config, model, X, seed=0)
    assert wide(X).shape == (2, 10)


def test_masks_have_exact_densities_and_stay_zero_in_training(resnet):
    model, _, layers = resnet
    densities = {x.name: 0.1 + 0.04 * i for i, x in enumerate(layers)}
    shapes = {x.name: dict(model.named_modules())[x.name].weight.shape for x in layers}
    masks = random_masks(layers, densities, shapes, seed=0)
    for x in layers:
        assert int(masks[x.name].sum()) == max(1, round(densities[x.name] * x.weights))
    work = apply_weight_masks(__import__("copy").deepcopy(model).train(), masks)
    got = masked_densities(work, list(masks))
    for x in layers:
        assert got[x.name] == pytest.approx(max(1, round(densities[x.name] * x.weights)) / x.weights)
    opt = torch.optim.SGD(work.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(work(X), torch.tensor([1, 2])).backward()
        opt.step()
    assert masked_densities(work, list(masks)) == got
    dense = fold_weight_masks(work)
    assert masked_densities(dense, list(masks)) == got and not hasattr(dense.conv1, "parametrizations")
    scores = {"a": torch.tensor([3.0, 1.0, 2.0]), "b": torch.tensor([[0.5, 4.0]])}
    top = global_topk_masks(scores, 0.6)
    assert top["a"].tolist() == [True, False, True] and top["b"].tolist() == [[False, True]]
    assert math.isclose(sum(int(m.sum()) for m in top.values()), 3)
