"""The YOLOv8 loss components as PAGCP tasks (the paper's setting: its "tasks" are the detector's loss components).

    tasks = DetectionTasks(model)                       # box, cls, dfl of `prunekit.train.detection_loss`
    policy = Pagcp(tolerance=0.2, allowance=20).attach(model, tasks.tasks(), held_out, forward=tasks.forward)

Held-out batches are ``(images [B, 3, S, S], targets [n, 6])`` as `prunekit.data.detection.collate_fn` makes them.
The oracle runs the model in eval mode (BatchNorm statistics frozen) but the loss needs the head's raw per-level
maps, so `forward` switches only the ``detect`` head to its training output. One loss evaluation per output gives
all three components (the task callables share it).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .pagcp_sweep import TaskLoss

COMPONENTS = ("box", "cls", "dfl")


class DetectionTasks:
    """Named PAGCP tasks for a YOLOv8-style detector: each of `components` of its loss on a held-out batch.

    Args:
        model: a `prunekit.models.yolov8.YOLOv8` (its head gives nc, strides, reg_max; channel pruning keeps them).
        components: a non-empty subset of ``("box", "cls", "dfl")`` (one name: single-task PAGCP).
        cfg: loss gains and assigner settings (`DetectionLossConfig`; YOLOv8 defaults).
    """

    def __init__(self, model: nn.Module, components: Sequence[str] = COMPONENTS, cfg: Optional[Any] = None):
        from ..train.detection import detection_loss_fn

        unknown = [c for c in components if c not in COMPONENTS]
        if not components or unknown or len(set(components)) != len(components):
            raise ConfigError(f"pagcp detection tasks: components must be distinct names from {list(COMPONENTS)}, got "
                              f"{list(components)}")
        self.components = tuple(components)
        self.loss = detection_loss_fn(model, cfg)
        self._last: Optional[tuple] = None  # (output object, its components): one loss call serves every task

    @staticmethod
    def forward(model: nn.Module, batch: Sequence[torch.Tensor]) -> Any:
        """The raw per-level maps [B, 4 * reg_max + nc, H_i, W_i] of `batch[0]` with the rest of `model` as it is
        (eval mode in the sweep)."""
        head = getattr(model, "detect", None)
        if head is None:
            raise ConfigError(f"pagcp detection tasks: {type(model).__name__} has no YOLOv8 'detect' head")
        was = head.training
        head.training = True  # the head's own flag only picks its output format; its submodules keep their mode
        try:
            return model(batch[0])
        finally:
            head.training = was

    def components_of(self, output: Any, batch: Sequence[torch.Tensor]) -> Dict[str, float]:
        """The loss components of `output` on `batch` (computed once per output object)."""
        if self._last is None or self._last[0] is not output:
            with torch.no_grad():
                self.loss(output, batch[1])
            self._last = (output, dict(self.loss.last_items))
        return self._last[1]

    def tasks(self) -> Dict[str, TaskLoss]:
        """{component: loss(output, batch) -> scalar tensor}."""
        def make(name: str) -> TaskLoss:
            return lambda output, batch: torch.tensor(self.components_of(output, batch)[name])

        return {name: make(name) for name in self.components}
