"""Predictor fit on cached features; the importance map's random subset."""
from __future__ import annotations

import torch

from prunekit.data import load
from prunekit.dynamic import DynamicConfig, attach
from prunekit.dynamic.fit import _fit_all, fit_predictors
from prunekit.dynamic.predictor import MaskPredictor
from prunekit.models import build


def test_joint_padded_fit_equals_fitting_each_predictor_alone():
    gen = torch.Generator().manual_seed(0)
    shapes = [(3, 5), (6, 2)]
    xs = [torch.randn(40, d, generator=gen) for d, _ in shapes]
    ys = [(torch.randn(40, o, generator=gen) > 0).float() for _, o in shapes]
    together = [MaskPredictor(d, o, softmax=(i == 1)) for i, (d, o) in enumerate(shapes)]
    alone = [MaskPredictor(d, o, softmax=(i == 1)) for i, (d, o) in enumerate(shapes)]
    for a, b in zip(together, alone):
        b.load_state_dict(a.state_dict())
    agree = _fit_all(together, xs, ys, iters=20, lr=0.05)
    for i, p in enumerate(alone):
        assert abs(_fit_all([p], [xs[i]], [ys[i]], iters=20, lr=0.05)[0] - agree[i]) < 1e-9
        torch.testing.assert_close(p.fc.weight, together[i].fc.weight, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(p.fc.bias, together[i].fc.bias, rtol=1e-5, atol=1e-6)


def test_fit_makes_predictors_agree_with_their_labels():
    torch.manual_seed(0)
    digits = load("digits", "train")
    dyn = attach(build("digits_cnn", pretrained=False), digits[0][0][None], DynamicConfig(threshold=0.8))
    backbone = {k: v.clone() for k, v in dyn.backbone.state_dict().items()}
    x = torch.stack([digits[i][0] for i in range(200, 328)])
    dyn.eval()
    with torch.no_grad():
        dyn(x)
    before = torch.cat([(dyn.last_masks[k] == dyn.last_labels[k]).float().flatten() for k in dyn.last_masks]).mean()
    agreement = fit_predictors(dyn, torch.utils.data.Subset(digits, range(200)), images=200, rounds=2, iters=100)
    with torch.no_grad():
        dyn(x)  # held-out images, predicted masks upstream
    after = torch.cat([(dyn.last_masks[k] == dyn.last_labels[k]).float().flatten() for k in dyn.last_masks]).mean()
    assert set(agreement) == {s.conv for s in dyn.sites} and min(agreement.values()) > 0.8
    assert after > before + 0.1 and after > 0.8
    assert all(torch.equal(v, dyn.backbone.state_dict()[k]) for k, v in backbone.items())  # backbone untouched


class _Recorder(torch.utils.data.Dataset):
    """Class-sorted items that record which indices were read."""

    def __init__(self, n):
        self.n, self.read = n, []

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.read.append(i)
        return torch.randn(1, 8, 8), int(i * 10 // self.n)


def test_importance_map_reads_a_random_subset_not_the_first_class():
    from prunekit.security.setup import importance_for

    data = _Recorder(400)
    imp = importance_for(build("digits_cnn", pretrained=False), data, "saliency", images=40)
    assert imp.shape == (8, 8) and len(data.read) == 40
    assert len({int(i * 10 // 400) for i in data.read}) >= 5  # several classes, not the first 40 items
