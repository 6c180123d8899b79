"""MACPruning pixel activation maps: drawing, the wrapper against the MAC-by-MAC skipped computation, importance."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.data import load
from prunekit.dynamic.pixel_importance import occlusion_map, saliency_map
from prunekit.dynamic.pixel_mask import (MACPrunedModel, PixelActivationMap, PixelMaskConfig, executed_macs,
                                         first_layer, skipped_conv2d)
from prunekit.errors import ConfigError
from prunekit.models import build


def _int_conv(c_in, c_out, stride, seed=0):
    gen = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1).double()
    with torch.no_grad():
        conv.weight.copy_(torch.randint(-9, 9, conv.weight.shape, generator=gen).double())
        conv.bias.copy_(torch.randint(-9, 9, (c_out,), generator=gen).double())
    return conv


@pytest.mark.parametrize("stride", [1, 2])
def test_skipped_macs_equal_the_masked_layer_exactly(stride):
    gen = torch.Generator().manual_seed(1)
    conv = _int_conv(3, 4, stride)
    x = torch.randint(-60, 60, (2, 3, 9, 8), generator=gen).double()
    mask = torch.rand(2, 9, 8, generator=gen) < 0.5
    out, n = skipped_conv2d(conv, x, mask)
    assert torch.equal(out, conv(x * mask[:, None]))  # integers in float64: exact
    assert n == int(executed_macs(conv, mask).sum())
    full, n_full = skipped_conv2d(conv, x, torch.ones(2, 9, 8, dtype=torch.bool))
    assert torch.equal(full, conv(x)) and n < n_full


def test_wrapper_runs_the_first_layer_on_active_pixels_with_fresh_maps():
    model = build("digits_cnn", pretrained=False).eval()
    pam = PixelActivationMap(PixelMaskConfig(keep_prob=0.5), (8, 8))
    wrapped = MACPrunedModel(model, pam, seed=0)
    x = torch.rand(3, 1, 8, 8)
    seen = {}
    handle = model.conv1.register_forward_hook(lambda m, a, o: seen.setdefault("out", o))
    with torch.no_grad():
        y = wrapped(x)
    handle.remove()
    first_mask = wrapped.last_mask.clone()
    reference, _ = skipped_conv2d(model.conv1, x, first_mask)
    assert torch.allclose(seen["out"], reference, atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(y, model(x * first_mask[:, None]))
        wrapped(x)
    assert not torch.equal(first_mask, wrapped.last_mask)  # drawn again per inference
    assert first_layer(model, x[:1]) == "conv1"


def test_importance_aware_map_keeps_the_top_pixels_always_on():
    importance = torch.arange(64.0).view(8, 8)
    pam = PixelActivationMap(PixelMaskConfig(keep_prob=0.5, top_q=0.25), (8, 8), importance)
    masks = pam.draw(4000, torch.Generator().manual_seed(0))
    top = importance.flatten().topk(16).indices
    assert masks.flatten(1)[:, top].all()
    rest = masks.flatten(1)[:, importance.flatten() < 48].float().mean()
    assert abs(float(rest) - 0.5) < 0.02
    assert abs(float(masks.float().mean()) - pam.active_fraction()) < 0.02 and pam.active_fraction() == 0.625
    with pytest.raises(ConfigError, match="importance map"):
        PixelActivationMap(PixelMaskConfig(top_q=0.1), (8, 8))
    with pytest.raises(ConfigError, match="keep_prob"):
        PixelMaskConfig(keep_prob=0.0)


def test_saliency_and_occlusion_rank_the_pixels_the_model_reads():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():  # only pixel (3, 3) matters: class 1 when it is bright
        model[1].weight.zero_()
        model[1].bias.zero_()
        model[1].weight[1, 27], model[1].bias[1] = 10.0, -3.0
    digits = load("digits", "train")
    images = torch.stack([digits[i][0] for i in range(64)])
    batches = [(images, (images[:, 0, 3, 3] > 0.3).long())]
    sal = saliency_map(model, batches)
    occ = occlusion_map(model, batches)
    assert sal.shape == (8, 8) and int(sal.flatten().argmax()) == 27 and float(sal.flatten()[:27].max()) == 0.0
    assert int(occ.flatten().argmax()) == 27 and float(occ.min()) >= 0
