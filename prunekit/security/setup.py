"""Models and importance maps for the security experiments: a registry classifier with weights, its training data."""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from torch import nn


def load_classifier(name: str, weights: Optional[str] = None, train_epochs: int = 15,
                    seed: int = 0) -> Tuple[nn.Module, Any, Any]:
    """A registry image classifier in eval mode, its training split and its `ModelInfo`.

    A model with stored weights loads them (or `weights`); one without (``digits_cnn``) is trained for
    `train_epochs` on its dataset first.
    """
    from ..data import load
    from ..io import load_state_dict_strict, load_tensors
    from ..models import build, info
    from ..train.loop import TrainConfig, train

    meta = info(name)
    norm = (meta.mean, meta.std) if meta.mean is not None and meta.dataset != "digits" else None
    train_set = load(meta.dataset, split="train", normalize=norm)
    if weights is not None:
        model = build(name, pretrained=False)
        load_state_dict_strict(model, load_tensors(weights), f"weights {weights}")
    elif name == "digits_cnn" or meta.dataset == "digits":
        torch.manual_seed(seed)
        model = build(name, pretrained=False)
        if train_epochs > 0:  # 0 keeps the random initialisation (enough to exercise the simulator)
            train(model, train_set, TrainConfig(epochs=train_epochs, lr=0.05, batch_size=64, weight_decay=5e-4,
                                                seed=seed, device="cpu", progress=False))
    else:
        model = build(name, pretrained=True)
    return model.eval(), train_set, meta


def importance_for(model: nn.Module, dataset, method: str = "saliency", images: int = 512,
                   batch_size: int = 128, seed: int = 0) -> torch.Tensor:
    """``[H, W]`` pixel importance of `model` over `images` items drawn at random (seeded) from `dataset`.

    A random draw, not the first items: stored training splits are sorted by class (the CIFAR-10 JPEG set), and a map
    computed on one class would keep the pixels that class needs, not those of the deployment distribution.
    """
    from ..dynamic.pixel_importance import pixel_importance

    n = min(images, len(dataset))
    index = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    subset = torch.utils.data.Subset(dataset, index) if n < len(dataset) else dataset
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=False)
    return pixel_importance(model, loader, method)
