"""Tracing: refusal of unknown operations, strict mode, and leaving the user's model as it was."""
import pytest
import torch
from torch import nn

import prunekit
from prunekit.errors import UnsupportedOperationError


class SortsChannels(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 1)
        self.c = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.b(torch.relu(self.a(x)))
        y = torch.sort(y, dim=1).values  # channel semantics the engine does not know
        return self.c(y)


def test_unknown_operation_refuses_its_groups_and_names_it():
    an = prunekit.analyze(SortsChannels().eval(), torch.randn(1, 3, 8, 8))
    b = next(g for g in an.groups if g.id == "b")
    assert not b.prunable
    assert "sort" in b.reasons[0] and "module" in b.reasons[0]
    a = next(g for g in an.groups if g.id == "a")
    assert a.prunable  # groups the operation does not touch stay prunable
    assert any("sort" in op for op in an.unknown_ops)


def test_strict_mode_raises_with_module_and_operation():
    with pytest.raises(UnsupportedOperationError, match="sort"):
        prunekit.analyze(SortsChannels().eval(), torch.randn(1, 3, 8, 8), strict=True)


def test_tracing_leaves_the_model_as_it_was():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Dropout(0.5), nn.Conv2d(8, 2, 1))
    model.train()
    model[0].weight.requires_grad_(False)
    handle = model[1].register_forward_hook(lambda *a: None)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prunekit.analyze(model, torch.randn(2, 3, 8, 8))
    assert model.training and model[1].training
    assert not model[0].weight.requires_grad and model[3].weight.requires_grad
    assert len(model[1]._forward_hooks) == 1 and len(model[0]._forward_pre_hooks) == 0
    handle.remove()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_dict_inputs_and_dataclass_outputs_and_frozen_params():
    from dataclasses import dataclass

    @dataclass
    class Out:
        logits: torch.Tensor

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 16), nn.Linear(16, 3)

        def forward(self, features, scale=1.0):
            if features.shape[0] > 1:  # python control flow is fine: the model really runs
                features = features * scale
            return Out(self.b(torch.relu(self.a(features))))

    net = Net().eval().requires_grad_(False)
    x = {"features": torch.randn(3, 4), "scale": 2.0}
    pruned, plan = prunekit.prune(net, x, ratio=0.5)
    assert pruned.a.out_features == 8 and pruned.b.in_features == 8
    assert pruned.prunekit_verification.passed


def test_option_a_resnet_pins_only_the_zero_padded_positions():
    from prunekit.models import build

    model = build("cifar_resnet20", pretrained=False).eval()
    an = prunekit.analyze(model, torch.randn(1, 3, 32, 32))
    refused = [g for g in an.refused() if "constant content" in " ".join(g.reasons)]
    assert refused, "the zero-padded shortcut positions must be refused"
    assert sorted(g.size for g in refused) == [16, 32]  # both zero-padded sides of stages 2 and 3
    stem = next(g for g in an.groups if g.id == "conv1")
    assert stem.prunable and stem.size == 16
