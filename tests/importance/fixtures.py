"""Small real models and hand-written channel groups shared by the importance and allocate tests.

- `Tiny`: conv1 -> bn1 -> relu -> conv2 -> bn2 (+ a residual pair conv3/bn3 added to bn2) -> fc1 -> fc2, trained
  for a few seconds on the scikit-learn 8x8 digits (real data, no files).
- `resnet20`: CIFAR ResNet-20 (option A) with the real pretrained weights from the shared data folder, and the
  CIFAR-10 raw test subset.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from prunekit.graph.types import ChannelGroup, GroupMember
from prunekit.io import load_tensors
from prunekit.paths import data_file

BN_PARAMS = ("weight", "bias", "running_mean", "running_var")


def identity_map(size: int) -> torch.Tensor:
    return torch.arange(size)[:, None]


def bn_members(name: str, size: int) -> List[GroupMember]:
    return [GroupMember(name, p, 0, identity_map(size), "norm") for p in BN_PARAMS]


class Tiny(nn.Module):
    """conv1(1->8) bn1 relu; conv2(8->16, stride 2) bn2 = y; z = relu(y + bn3(conv3(relu(y)))); fc1(16->12) fc2."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16)
        self.conv3, self.bn3 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.fc1, self.fc2 = nn.Linear(16, 12), nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(x))
        z = F.relu(y + self.bn3(self.conv3(F.relu(y))))
        return self.fc2(F.relu(self.fc1(z.mean((2, 3)))))


def tiny_groups(with_heads: bool = False) -> List[ChannelGroup]:
    """Hand-written groups of `Tiny`: conv1 channels, the residual stream, fc1 features (and fc1 as 3 heads of 4)."""
    groups = [
        ChannelGroup("conv1", 8, [
            GroupMember("conv1", "weight", 0, identity_map(8), "out"),
            GroupMember("conv1", "bias", 0, identity_map(8), "out"),
            *bn_members("bn1", 8),
            GroupMember("conv2", "weight", 1, identity_map(8), "in"),
        ], tags={"scale": 1, "kind": "conv", "signature": "conv3x3-bn"}),
        ChannelGroup("res", 16, [
            GroupMember("conv2", "weight", 0, identity_map(16), "out"),
            GroupMember("conv2", "bias", 0, identity_map(16), "out"),
            *bn_members("bn2", 16),
            GroupMember("conv3", "weight", 0, identity_map(16), "out"),
            GroupMember("conv3", "bias", 0, identity_map(16), "out"),
            *bn_members("bn3", 16),
            GroupMember("conv3", "weight", 1, identity_map(16), "in"),
            GroupMember("fc1", "weight", 1, identity_map(16), "in"),
        ], tags={"scale": 2, "kind": "conv", "signature": "conv3x3-bn"}),
        ChannelGroup("fc1", 12, [
            GroupMember("fc1", "weight", 0, identity_map(12), "out"),
            GroupMember("fc1", "bias", 0, identity_map(12), "out"),
            GroupMember("fc2", "weight", 1, identity_map(12), "in"),
        ], tags={"kind": "mlp", "signature": "linear"}),
    ]
    if with_heads:
        heads = torch.arange(12).view(3, 4)
        groups.append(ChannelGroup("fc1_heads", 3, [
            GroupMember("fc1", "weight", 0, heads, "out"),
            GroupMember("fc1", "bias", 0, heads, "out"),
            GroupMember("fc2", "weight", 1, heads, "in"),
        ], unit="head", tags={"kind": "attention"}))
    return groups


def digits() -> Tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn digits as [1797, 1, 8, 8] floats in [0, 1] and labels [1797]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0
    return x, torch.tensor(data.target, dtype=torch.long)


def trained_tiny(steps: int = 50, seed: int = 0) -> Tuple[Tiny, torch.Tensor, torch.Tensor]:
    """A `Tiny` trained briefly on digits (seeded); returns (model in eval mode, images, labels)."""
    torch.manual_seed(seed)
    x, y = digits()
    model = Tiny()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (64,), generator=gen)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return model.eval(), x, y


# ---------------------------------------------------------------- CIFAR ResNet-20 (option A), real weights
class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = cout - cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        short = x if not self.pad else F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad // 2, self.pad // 2))
        return F.relu(out + short)


class ResNet20(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16)
        stages, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            stages.append(nn.Sequential(*[_Block(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                                          for i in range(3)]))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(x.mean((2, 3)))


def resnet20() -> ResNet20:
    """ResNet-20 with the akamaster CIFAR-10 weights (91.78% reported), in eval mode."""
    state = load_tensors(data_file("weights/resnet20-12fca82f.th", "ResNet-20 weights"))["state_dict"]
    model = ResNet20()
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    return model.eval()


def resnet20_inner_groups(model: ResNet20) -> List[ChannelGroup]:
    """The 9 block-internal groups (conv1 out, bn1, conv2 in) with their stage stride as the "scale" tag."""
    groups = []
    for stage, scale in (("layer1", 1), ("layer2", 2), ("layer3", 4)):
        for i in range(3):
            pre = f"{stage}.{i}"
            c = model.get_submodule(f"{pre}.conv1").out_channels
            groups.append(ChannelGroup(f"{pre}.conv1", c, [
                GroupMember(f"{pre}.conv1", "weight", 0, identity_map(c), "out"),
                *bn_members(f"{pre}.bn1", c),
                GroupMember(f"{pre}.conv2", "weight", 1, identity_map(c), "in"),
            ], tags={"scale": scale, "signature": f"block{c}", "kind": "conv"}))
    return groups


def cifar_raw(n: int = 256) -> Tuple[torch.Tensor, torch.Tensor]:
    """The first `n` raw CIFAR-10 test images, normalised for the akamaster weights: [n, 3, 32, 32], labels [n]."""
    archive = np.load(data_file("cifar10/cifar10_test_first_raw.npz", "CIFAR-10 raw test subset"))
    x = torch.tensor(archive["x"][:n], dtype=torch.float32).permute(0, 3, 1, 2) / 255.0
    mean = torch.tensor((0.485, 0.456, 0.406))[:, None, None]
    std = torch.tensor((0.229, 0.224, 0.225))[:, None, None]
    return (x - mean) / std, torch.tensor(archive["y"][:n], dtype=torch.long)
