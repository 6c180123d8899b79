"""Training a `DynamicChannelModel` (FTWT, paper 9): predictor warm-up, then masked training with a cool-down.

0. Fit (an addition for short CPU budgets, ``fit_images: 0`` turns it off): each predictor fitted full-batch on
   pooled inputs and labels cached from a few hundred training images (`prunekit.dynamic.fit`), first unmasked, then
   under the masks fitted so far.
1. Warm-up (an addition for short CPU budgets, 0 steps turns it off): the backbone frozen and unmasked, only the
   predictors learn their labels, so masked training does not start from random masks.
2. Masked training with the reference loop (`prunekit.train.loop.train`): task loss plus
   ``w * mask_loss`` with ``w = 1`` until ``cooldown`` of the steps, then 0 (the predictors are frozen from then on:
   "supervision off after the cool-down"). The predictors have their own SGD (``predictor_lr``, no weight decay); in
   ``decoupled`` mode only the mask loss reaches them, in ``joint`` mode it also reaches the backbone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError
from .model import DynamicChannelModel


@dataclass
class DynamicTrainConfig:
    """Settings of `train_dynamic`.

    Attributes:
        epochs: passes of masked training. lr / momentum / weight_decay: backbone SGD (cosine schedule).
        predictor_lr: SGD learning rate of the predictors (FTWT's ``mlr``), momentum 0.9, no weight decay.
        cooldown: fraction of the masked-training steps with the mask loss on.
        warmup_steps: predictor-only steps before masked training (backbone frozen, no masks).
        batch_size: items per step. max_steps: stop masked training after this many steps (smoke runs).
        seed: data order and initialisation.
        fit_images: training images cached to fit the predictors before training (0: no fit).
        fit_rounds / fit_iters: caching rounds and full-batch Adam steps per predictor and round.
    """

    epochs: int = 1
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    predictor_lr: float = 0.1
    cooldown: float = 0.5
    warmup_steps: int = 100
    batch_size: int = 128
    max_steps: Optional[int] = None
    seed: int = 0
    fit_images: int = 0
    fit_rounds: int = 2
    fit_iters: int = 300

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("dynamic training: epochs and batch_size must be >= 1")
        if self.lr <= 0 or self.predictor_lr <= 0:
            raise ConfigError("dynamic training: lr and predictor_lr must be > 0")
        if not 0.0 <= self.cooldown <= 1.0:
            raise ConfigError(f"dynamic training: cooldown must lie in [0, 1], got {self.cooldown}")
        if self.warmup_steps < 0 or (self.max_steps is not None and self.max_steps < 1):
            raise ConfigError("dynamic training: warmup_steps must be >= 0 and max_steps >= 1 or null")
        if self.fit_images < 0 or self.fit_rounds < 1 or self.fit_iters < 1:
            raise ConfigError("dynamic training: fit_images must be >= 0, fit_rounds and fit_iters >= 1")


def warm_up_predictors(dyn: DynamicChannelModel, dataset: Dataset, steps: int, lr: float, batch_size: int,
                       seed: int = 0) -> float:
    """Fit only the predictors to their labels on the frozen, unmasked backbone (eval-mode BatchNorm).

    Returns:
        the mask loss of the last step (nan when `steps` is 0).
    """
    if steps == 0:
        return float("nan")
    optimizer = torch.optim.SGD(dyn.predictors.parameters(), lr=lr, momentum=0.9)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    flags = (dyn.training, dyn.mask_source, dyn.supervise)
    frozen = [p for p in dyn.backbone.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    dyn.eval()
    dyn.mask_source, dyn.supervise = "none", True
    loss, done = float("nan"), 0
    try:
        while done < steps:
            for batch in loader:
                with torch.enable_grad():
                    dyn(batch[0])
                    optimizer.zero_grad(set_to_none=True)
                    dyn.mask_loss.backward()
                optimizer.step()
                loss, done = float(dyn.mask_loss.detach()), done + 1
                if done >= steps:
                    break
    finally:
        for p in frozen:
            p.requires_grad_(True)
        dyn.train(flags[0])
        dyn.mask_source, dyn.supervise = flags[1], flags[2]
    return loss


class FTWTHook:
    """Reference-loop hook: adds ``w * mask_loss``, steps the predictors' own optimizer, ends supervision at the
    cool-down.

    Args:
        cfg: the training settings (predictor_lr, cooldown).
    """

    def __init__(self, cfg: DynamicTrainConfig):
        self.cfg = cfg
        self.cooldown_step = 0
        self.optimizer: Optional[torch.optim.Optimizer] = None

    def on_train_start(self, model: DynamicChannelModel, info: Any) -> None:
        total = info.total_steps if self.cfg.max_steps is None else min(info.total_steps, self.cfg.max_steps)
        self.cooldown_step = int(round(self.cfg.cooldown * total))
        self.optimizer = torch.optim.SGD(model.predictors.parameters(), lr=self.cfg.predictor_lr, momentum=0.9)
        model.supervise = self.cooldown_step > 0

    def extra_loss(self, model: DynamicChannelModel, batch: Any, outputs: Any, step: int) -> Optional[torch.Tensor]:
        return model.mask_loss if model.supervise else None

    def after_backward(self, model: DynamicChannelModel, step: int, epoch: int) -> None:
        if model.supervise:
            self.optimizer.step()
        for p in model.predictors.parameters():  # the backbone optimizer never moves the predictors
            p.grad = None
        if step + 1 >= self.cooldown_step:
            model.supervise = False


def train_dynamic(dyn: DynamicChannelModel, dataset: Dataset, cfg: DynamicTrainConfig,
                  progress: bool = True) -> Dict[str, Any]:
    """Fit and warm the predictors up, then train backbone and predictors with masks (in place).

    Returns:
        ``{"fit_agreement", "warmup_loss", "steps", "final_loss", "seconds"}``.
    """
    from ..train.loop import TrainConfig, train
    from .fit import fit_predictors

    fitted = float("nan")
    if cfg.fit_images > 0:
        agreement = fit_predictors(dyn, dataset, cfg.fit_images, cfg.fit_rounds, cfg.fit_iters, seed=cfg.seed)
        fitted = sum(agreement.values()) / len(agreement)
    warm = warm_up_predictors(dyn, dataset, cfg.warmup_steps, cfg.predictor_lr, cfg.batch_size, cfg.seed)
    dyn.mask_source = "predicted"
    loop = TrainConfig(epochs=cfg.epochs, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                       batch_size=cfg.batch_size, seed=cfg.seed, device="cpu", max_steps=cfg.max_steps,
                       progress=progress)
    result = train(dyn, dataset, loop, hooks=[FTWTHook(cfg)])
    dyn.eval()
    dyn.supervise = False
    return {"fit_agreement": fitted, "warmup_loss": warm, "steps": result.steps, "final_loss": result.final_loss,
            "seconds": result.seconds}
