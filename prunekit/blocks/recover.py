"""Optional recovery after block pruning: a short fine-tune with the block masks held fixed, distilling from the
unpruned model (LPViT fine-tunes with soft logit distillation, alpha 0.5, tau 1; methods.md section 5 step 6).

Masks stay fixed by re-zeroing the removed blocks after every optimiser step (`BlockPlan.apply`), so the pruned
weights never come back; layers already converted to `BlockSparseLinear` store only kept blocks and need nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, List, Optional

import torch
from torch import nn

from ..errors import ConfigError
from ..metrics.accuracy import logits_of
from ..train.distill.logit_kd import LogitKD, LogitKDConfig
from .plan import BlockPlan


@dataclass
class RecoveryConfig:
    """Attributes: lr (AdamW), epochs over the batches, temperature / alpha of the logit distillation
    (alpha weighs distillation against `task_loss` when one is given), weight_decay."""

    lr: float = 1e-4
    epochs: int = 1
    temperature: float = 1.0
    alpha: float = 0.5
    weight_decay: float = 0.0

    def __post_init__(self):
        if self.lr <= 0 or self.epochs < 1 or not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"RecoveryConfig: need lr > 0, epochs >= 1, alpha in [0, 1]; got {self}")


def _forward(model: nn.Module, batch: Any) -> torch.Tensor:
    inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
    out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    if not isinstance(out, torch.Tensor) and not hasattr(out, "logits") and hasattr(out, "to_tuple"):
        out = out.to_tuple()
    return logits_of(out)


def recover(student: nn.Module, teacher: nn.Module, plan: BlockPlan, batches: Iterable[Any],
            config: Optional[RecoveryConfig] = None,
            task_loss: Optional[Callable[[torch.Tensor, Any], torch.Tensor]] = None) -> List[float]:
    """Fine-tune `student` (pruned by `plan`) towards `teacher` with the masks fixed, in place.

    Args:
        student: the pruned model (masked dense or converted).
        teacher: the unpruned model (frozen, eval mode).
        plan: the block plan whose removed blocks stay zero.
        batches: inputs (a tensor, a dict of keyword inputs, or ``(inputs, labels)``); iterated once per epoch.
        config: settings.
        task_loss: ``task_loss(student_logits, batch) -> scalar`` mixed in with weight ``1 - alpha``.

    Returns:
        The loss of every step.
    """
    cfg = config or RecoveryConfig()
    kd = LogitKD(LogitKDConfig(temperature=cfg.temperature))
    params = [p for p in student.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    teacher.eval()
    was_training = student.training
    student.train()
    losses = []
    try:
        for _ in range(cfg.epochs):
            for batch in batches:
                with torch.no_grad():
                    target = _forward(teacher, batch)
                logits = _forward(student, batch)
                loss = kd(logits, target)
                if task_loss is not None:
                    loss = cfg.alpha * loss + (1 - cfg.alpha) * task_loss(logits, batch)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                plan.apply(student)
                losses.append(float(loss.detach()))
    finally:
        student.train(was_training)
    return losses
