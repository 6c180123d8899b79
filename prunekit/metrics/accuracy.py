"""Top-1 accuracy of a classifier over a dataset."""
from __future__ import annotations

from typing import Any, Optional

import torch


def logits_of(output: Any) -> torch.Tensor:
    """The logits tensor of a model output: the tensor itself, ``output.logits``, or the first element of a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"prunekit.metrics: cannot find logits in a model output of type {type(output).__name__}")


def _device_of(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def evaluate_accuracy(model: torch.nn.Module, dataset: torch.utils.data.Dataset, batch_size: int = 256,
                      limit: Optional[int] = None, progress: bool = True, description: str = "accuracy") -> float:
    """Fraction of the first `limit` items (all when None) whose arg-max logit equals the label.

    The model runs in eval mode under ``torch.inference_mode`` on the device of its parameters; its previous
    train/eval mode is restored afterwards.

    Args:
        model: maps images ``[B, C, H, W]`` to logits ``[B, num_classes]`` (or an output with ``.logits``).
        dataset: yields ``(image [C, H, W], label)`` pairs.
        batch_size: images per forward.
        limit: evaluate only the first `limit` items.
        progress: show a rich progress bar (transient).

    Returns:
        Accuracy in [0, 1].
    """
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n == 0:
        raise ValueError("prunekit.metrics.accuracy: the dataset (after limit) is empty")
    subset = dataset if n == len(dataset) else torch.utils.data.Subset(dataset, range(n))
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=False)
    device = _device_of(model)
    was_training = model.training
    model.eval()
    correct = 0
    try:
        from rich.progress import Progress

        with Progress(transient=True, disable=not progress) as bar, torch.inference_mode():
            task = bar.add_task(description, total=n)
            for images, labels in loader:
                logits = logits_of(model(images.to(device)))
                correct += int((logits.argmax(dim=-1).cpu() == labels).sum())
                bar.advance(task, len(labels))
    finally:
        model.train(was_training)
    return correct / n
