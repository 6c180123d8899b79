"""Image transforms in plain torch: normalisation constants by name and the standard CIFAR augmentation.

Every transform takes and returns a float tensor of shape ``[C, H, W]`` (one image, values in 0-1 before
normalisation). The random ones draw from the global torch generator, so ``torch.manual_seed`` makes them repeatable.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple, Union

import torch

from ..errors import ConfigError

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)

NORMALIZATIONS = {
    "cifar": (CIFAR_MEAN, CIFAR_STD),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "fashion_mnist": (FASHION_MNIST_MEAN, FASHION_MNIST_STD),
}

NormalizeSpec = Union[None, str, Tuple[Sequence[float], Sequence[float]]]
Transform = Callable[[torch.Tensor], torch.Tensor]


def normalization(spec: NormalizeSpec) -> Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]]:
    """Resolve a normalisation given by name (``"cifar"``, ``"imagenet"``, ``"fashion_mnist"``), as
    ``(mean, std)`` or None (no normalisation).

    Raises:
        ConfigError: for an unknown name or malformed pair; the message lists the known names.
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec not in NORMALIZATIONS:
            raise ConfigError(f"prunekit.data.transforms: unknown normalisation '{spec}'; "
                              f"known: {', '.join(sorted(NORMALIZATIONS))} (or a (mean, std) pair, or None)")
        return NORMALIZATIONS[spec]
    try:
        mean, std = spec
        mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    except (TypeError, ValueError):
        raise ConfigError(f"prunekit.data.transforms: normalisation must be a name, a (mean, std) pair or None; "
                          f"got {spec!r}") from None
    if len(mean) != len(std) or any(s <= 0 for s in std):
        raise ConfigError(f"prunekit.data.transforms: bad normalisation mean={mean} std={std}")
    return mean, std


class Normalize:
    """``(x - mean) / std`` per channel; ``x`` is ``[C, H, W]`` or ``[N, C, H, W]``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


class RandomCrop:
    """Zero-pad by `padding` on every side, then crop a random ``size x size`` window. ``[C, H, W]`` in and out."""

    def __init__(self, size: int = 32, padding: int = 4):
        self.size, self.padding = size, padding

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        p = self.padding
        padded = torch.nn.functional.pad(x, (p, p, p, p)) if p else x
        h, w = padded.shape[-2:]
        top = int(torch.randint(0, h - self.size + 1, ()).item())
        left = int(torch.randint(0, w - self.size + 1, ()).item())
        return padded[..., top:top + self.size, left:left + self.size]

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror the image left-right with probability `p`. ``[C, H, W]`` in and out."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(-1) if torch.rand(()).item() < self.p else x

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for transform in self.transforms:
            x = transform(x)
        return x

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


def standard_augmentation(size: int = 32, padding: int = 4) -> Compose:
    """The usual CIFAR training augmentation: random crop `size` with zero padding `padding`, horizontal flip."""
    return Compose([RandomCrop(size, padding), RandomHorizontalFlip(0.5)])


def resolve_augment(augment: Union[None, bool, str, Transform], size: int = 32) -> Optional[Transform]:
    """Turn a loader's ``augment`` argument into a transform: None/False -> none, True/``"standard"`` -> crop+flip,
    a callable -> itself."""
    if augment is None or augment is False:
        return None
    if augment is True or augment == "standard":
        return standard_augmentation(size, 4)
    if callable(augment):
        return augment
    raise ConfigError(f"prunekit.data.transforms: augment must be None, True, 'standard' or a callable; got {augment!r}")


def build_transform(augment: Union[None, bool, str, Transform], normalize: NormalizeSpec,
                    size: int = 32) -> Optional[Transform]:
    """Augmentation (on 0-1 pixels) followed by normalisation; None when both are off."""
    steps = []
    aug = resolve_augment(augment, size)
    if aug is not None:
        steps.append(aug)
    norm = normalization(normalize)
    if norm is not None:
        steps.append(Normalize(*norm))
    if not steps:
        return None
    return steps[0] if len(steps) == 1 else Compose(steps)
