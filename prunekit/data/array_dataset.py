"""An in-memory image classification dataset shared by the CIFAR-10, digits and Fashion-MNIST loaders."""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch


class ImageArrayDataset(torch.utils.data.Dataset):
    """Images held in memory, returned one at a time as float tensors with an optional transform.

    Args:
        images: ``[N, C, H, W]`` uint8 (pixels 0-255, divided by 255 on access) or float32 (already 0-1).
        labels: ``[N]`` integer class indices.
        classes: class names, index = label.
        transform: called on each ``[C, H, W]`` float image (augmentation and/or normalisation), or None.
        name: shown in ``repr`` and error messages.

    Items are ``(image, label)`` with image float32 ``[C, H, W]`` and label a Python int, so the default
    ``DataLoader`` collation gives ``[B, C, H, W]`` and ``[B]`` int64.
    """

    def __init__(self, images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                 classes: Sequence[str], transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                 name: str = "dataset"):
        images = torch.as_tensor(images)
        labels = torch.as_tensor(labels).long()
        if images.ndim != 4 or images.shape[0] != labels.shape[0]:
            raise ValueError(f"{name}: expected images [N, C, H, W] and labels [N]; "
                             f"got {tuple(images.shape)} and {tuple(labels.shape)}")
        self.images, self.labels = images, labels
        self.classes = list(classes)
        self.transform = transform
        self.name = name

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def image(self, index: int) -> torch.Tensor:
        """The untransformed image ``index`` as float32 ``[C, H, W]`` in 0-1."""
        x = self.images[index]
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        x = self.image(index)
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[index])

    def subset(self, limit: Optional[int]) -> "ImageArrayDataset":
        """The first `limit` items (all when None), sharing memory with this dataset."""
        if limit is None or limit >= len(self):
            return self
        return ImageArrayDataset(self.images[:limit], self.labels[:limit], self.classes, self.transform, self.name)

    def __repr__(self) -> str:
        shape = tuple(self.images.shape[1:])
        return f"ImageArrayDataset({self.name}, n={len(self)}, image={shape}, transform={self.transform!r})"
