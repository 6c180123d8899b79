"""Every registered distillation loss meets the loss contract, and the recipes' distillation config accepts any
registered loss by name (no list of names in the config)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from prunekit.errors import ConfigError
from prunekit.methods.stages import DistillConfig, build_distiller
from prunekit.train.distill import DISTILL_LOSSES


@pytest.mark.parametrize("name", DISTILL_LOSSES.names())
def test_distill_loss_conforms(name):
    cls = DISTILL_LOSSES.get(name)
    assert dataclasses.is_dataclass(cls.Config) and cls.kind in ("features", "logits")
    loss = cls()  # defaults are valid
    assert isinstance(loss, torch.nn.Module)
    gen = torch.Generator().manual_seed(0)
    shape = (2, 4, 5, 5) if cls.kind == "features" else (2, 10)
    teacher = torch.randn(shape, generator=gen)
    student = torch.randn(shape, generator=gen).requires_grad_(True)
    value = loss(student, teacher)
    assert value.dim() == 0 and torch.isfinite(value) and float(value.detach()) > 0
    value.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert float(loss(teacher, teacher)) == pytest.approx(0.0, abs=1e-6)  # equal inputs: nothing to distil
    with pytest.raises(Exception):
        cls(no_such_option=1)


@pytest.mark.parametrize("name", DISTILL_LOSSES.names())
def test_distill_config_takes_any_registered_loss_by_its_kind(name):
    kind = DISTILL_LOSSES.get(name).kind
    if kind == "features":
        cfg = DistillConfig(feature_loss=name)
        assert set(cfg.feature_loss_args()) <= {f.name for f in dataclasses.fields(DISTILL_LOSSES.get(name).Config)}
        with pytest.raises(ConfigError, match=r"feature_args\.no_such_option"):
            DistillConfig(feature_loss=name, feature_args={"no_such_option": 1})
        with pytest.raises(ConfigError, match="logit_loss must be a registered loss comparing logits"):
            DistillConfig(logit_loss=name)
    else:
        assert DistillConfig(logit_loss=name, logit_weight=1.0).logit_loss == name
        with pytest.raises(ConfigError, match="feature_loss must be 'none' or a registered loss comparing feature"):
            DistillConfig(feature_loss=name)
    with pytest.raises(ConfigError, match="feature_loss must be .*got 'no_such_loss'"):
        DistillConfig(feature_loss="no_such_loss")


def test_distiller_is_built_from_the_config_names():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 10))
    cfg = DistillConfig(feature_loss="cwd", tau=2.0, layers=("1",), logit_weight=0.5, temperature=3.0)
    distiller, layers = build_distiller(net, net, torch.randn(2, 3, 8, 8), cfg)
    assert layers == ["1"]
    assert [t.loss for t in distiller.terms] == ["cwd", "logit_kd"]
    assert distiller.terms[0].loss_args == {"tau": 2.0} and distiller.terms[1].loss_args == {"temperature": 3.0}
