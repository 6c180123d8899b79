"""CIFAR ResNets (He et al. 2016, "Deep Residual Learning for Image Recognition", section 4.2).

Two shortcut flavours:

* option A (`CifarResNet`): where the shape changes, the shortcut subsamples by 2 and zero-pads the channels
  (no parameters). The layout is that of akamaster/pytorch_resnet_cifar10, whose ResNet-20/32/44/56 weights load
  strictly. Those weights expect ImageNet mean/std input normalisation.
* option B (`CifarResNetB`): where the shape changes, a 1x1 conv + BN `downsample`; final layer `fc`. Its ResNet-56
  weights (friendshipkim/neuron-merging) expect CIFAR mean/std normalisation.

Models take already-normalised input of shape [B, 3, H, W] (32x32 for CIFAR) and return logits [B, num_classes].
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Dict, List, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CheckpointError
from ..io import load_state_dict_strict, load_tensors
from ..paths import data_file

PathLike = Union[str, Path]

#: Local option-A checkpoints (relative to the data root), by depth.
OPTION_A_WEIGHTS: Dict[int, str] = {
    20: "weights/resnet20-12fca82f.th",
    32: "weights/resnet32-d509ac18.th",
    44: "weights/resnet44-014dd654.th",
    56: "weights/resnet56-4bfd9763.th",
}
#: Local option-B ResNet-56 checkpoint (relative to the data root).
OPTION_B_WEIGHTS = "weights/resnet56_optionB.safetensors"


class PadShortcut(nn.Module):
    """Option-A shortcut: stride-2 spatial subsampling, then zero channels padded on both sides.

    Args:
        pad: channels of zeros added before and after the input channels (``planes // 4``).

    Shapes: [B, C, H, W] -> [B, C + 2 * pad, ceil(H / 2), ceil(W / 2)].
    """

    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), "constant", 0.0)

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


def _conv3x3(in_planes: int, planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlockA(nn.Module):
    """Two 3x3 conv-BN layers plus an identity or `PadShortcut` shortcut.

    Shapes: [B, in_planes, H, W] -> [B, planes, H / stride, W / stride].
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = PadShortcut(planes // 4)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class BasicBlockB(nn.Module):
    """Two 3x3 conv-BN layers plus an identity or 1x1 conv-BN (`downsample`) shortcut.

    Shapes: [B, in_planes, H, W] -> [B, planes, H / stride, W / stride].
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: Optional[nn.Module] = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


def _stages(block: type, depth: int) -> List[nn.Sequential]:
    """The three stages (16, 32, 64 channels; strides 1, 2, 2) of a depth-`depth` CIFAR ResNet."""
    if (depth - 2) % 6 != 0 or depth < 8:
        raise ValueError(f"cifar_resnet: depth must be 6n + 2 (20, 32, 44, 56, 110...), got {depth}")
    blocks_per_stage = (depth - 2) // 6
    in_planes, stages = 16, []
    for planes, stride in ((16, 1), (32, 2), (64, 2)):
        blocks = []
        for i in range(blocks_per_stage):
            blocks.append(block(in_planes, planes, stride if i == 0 else 1))
            in_planes = planes
        stages.append(nn.Sequential(*blocks))
    return stages


def _init_weights(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class CifarResNet(nn.Module):
    """CIFAR ResNet with option-A (parameter-free) shortcuts; head named `linear`.

    Args:
        depth: 6n + 2 layers.
        num_classes: output logits.

    Shapes: [B, 3, H, W] -> [B, num_classes].
    """

    def __init__(self, depth: int = 56, num_classes: int = 10):
        super().__init__()
        self.depth = depth
        self.conv1 = _conv3x3(3, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1, self.layer2, self.layer3 = _stages(BasicBlockA, depth)
        self.linear = nn.Linear(64, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


class CifarResNetB(nn.Module):
    """CIFAR ResNet with option-B (1x1 conv + BN) shortcuts; head named `fc`.

    Args:
        depth: 6n + 2 layers.
        num_classes: output logits.

    Shapes: [B, 3, H, W] -> [B, num_classes].
    """

    def __init__(self, depth: int = 56, num_classes: int = 10):
        super().__init__()
        self.depth = depth
        self.conv1 = _conv3x3(3, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1, self.layer2, self.layer3 = _stages(BasicBlockB, depth)
        self.fc = nn.Linear(64, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def _fill_legacy_bn_counters(model: nn.Module, state: Dict[str, torch.Tensor]) -> None:
    """Old checkpoints lack BatchNorm ``num_batches_tracked``; add a zero counter where running stats are present."""
    for key, value in model.state_dict().items():
        if key.endswith(".num_batches_tracked") and key not in state:
            prefix = key[: -len("num_batches_tracked")]
            if prefix + "running_mean" in state:
                state[key] = torch.zeros_like(value)


def load_option_a(model: CifarResNet, path: PathLike) -> CifarResNet:
    """Load an akamaster checkpoint (``{"state_dict": {"module.<name>": tensor}}``) strictly into `model`.

    Raises:
        CheckpointError: the file is unreadable, has no ``state_dict``, or its keys/shapes do not match (named).
    """
    obj = load_tensors(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        raise CheckpointError(f"cifar_resnet: {path} is not an akamaster checkpoint (no 'state_dict' dict inside)")
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj["state_dict"].items()}
    _fill_legacy_bn_counters(model, state)
    load_state_dict_strict(model, state, source=f"checkpoint {path}")
    return model


def load_option_b(model: CifarResNetB, path: PathLike) -> CifarResNetB:
    """Load a plain state dict (safetensors or torch file) strictly into `model`.

    Raises:
        CheckpointError: the file is unreadable or its keys/shapes do not match (named).
    """
    state = load_tensors(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"cifar_resnet: {path} does not hold a state dict")
    load_state_dict_strict(model, dict(state), source=f"checkpoint {path}")
    return model


def _option_a(depth: int, pretrained: bool, weights: Optional[PathLike], num_classes: int) -> CifarResNet:
    model = CifarResNet(depth, num_classes)
    if weights is not None:
        return load_option_a(model, weights)
    if not pretrained:
        return model
    if depth not in OPTION_A_WEIGHTS:
        warnings.warn(f"cifar_resnet: no pretrained weights for ResNet-{depth}; returning a randomly initialised model",
                      stacklevel=3)
        return model
    return load_option_a(model, data_file(OPTION_A_WEIGHTS[depth], f"ResNet-{depth} weights"))


def resnet20(pretrained: bool = True, weights: Optional[PathLike] = None, num_classes: int = 10) -> CifarResNet:
    """CIFAR ResNet-20, option A (0.27M params); `weights` overrides the local checkpoint path."""
    return _option_a(20, pretrained, weights, num_classes)


def resnet32(pretrained: bool = True, weights: Optional[PathLike] = None, num_classes: int = 10) -> CifarResNet:
    """CIFAR ResNet-32, option A (0.46M params)."""
    return _option_a(32, pretrained, weights, num_classes)


def resnet44(pretrained: bool = True, weights: Optional[PathLike] = None, num_classes: int = 10) -> CifarResNet:
    """CIFAR ResNet-44, option A (0.66M params)."""
    return _option_a(44, pretrained, weights, num_classes)


def resnet56(pretrained: bool = True, weights: Optional[PathLike] = None, num_classes: int = 10) -> CifarResNet:
    """CIFAR ResNet-56, option A (0.85M params)."""
    return _option_a(56, pretrained, weights, num_classes)


def resnet110(pretrained: bool = True, weights: Optional[PathLike] = None, num_classes: int = 10) -> CifarResNet:
    """CIFAR ResNet-110, option A (1.7M params); no local weights, so `pretrained` only warns."""
    return _option_a(110, pretrained, weights, num_classes)


def resnet20_b(pretrained: bool = False, weights: Optional[PathLike] = None, num_classes: int = 10) -> CifarResNetB:
    """CIFAR ResNet-20 with option-B shortcuts (0.27M params), for training from scratch: every channel group is
    prunable (option A's zero-padded shortcuts tie stages 2-3 to constant content). No local weights."""
    model = CifarResNetB(20, num_classes)
    if weights is not None:
        return load_option_b(model, weights)
    if pretrained:
        warnings.warn("cifar_resnet: no pretrained weights for ResNet-20 option B; returning a randomly initialised "
                      "model", stacklevel=2)
    return model


def resnet56_b(pretrained: bool = True, weights: Optional[PathLike] = None, num_classes: int = 10) -> CifarResNetB:
    """CIFAR ResNet-56 with option-B shortcuts (0.86M params), neuron-merging weights."""
    model = CifarResNetB(56, num_classes)
    if weights is not None:
        return load_option_b(model, weights)
    if not pretrained:
        return model
    return load_option_b(model, data_file(OPTION_B_WEIGHTS, "ResNet-56 option-B weights"))
