"""The training stages both seed papers' recipes share, and their configs.

Stage 1 (`sparse_train_stage`) trains the task's model with the BN-L1 subgradient; stage 3 (`finetune_stage`)
fine-tunes the pruned model with the task loss plus distillation from the unpruned one, then re-estimates the
BatchNorm statistics. Both go through the recipe's task (`prunekit.methods.task`), so they run unchanged on
classifiers and detectors. The pruning stage (stage 2) is each recipe's own.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..errors import ConfigError
from .task import need


@dataclass
class TrainStageConfig:
    """Optimiser settings of one training stage (the recipes' stage 1 and stage 3 extend it).

    Attributes:
        epochs: passes over the (sub)set. lr: peak learning rate (cosine to `min_lr_ratio` * lr). momentum,
            weight_decay: SGD.
        warmup_steps: linear warm-up steps.
        min_lr_ratio: floor of the cosine schedule as a fraction of `lr` (YOLO training uses 0.01 to 0.05).
        grad_clip: clip the global gradient norm to this value (0 = off; the YOLOv8 loss uses 10).
        max_steps: stop after this many steps and leave the stage unfinished (resumable; for smoke runs and tests).
        checkpoint_every / checkpoint_unit: training checkpoints inside the stage folder, for resuming.
    """

    SECTION: ClassVar[str] = "stage"

    epochs: int = 1
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    grad_clip: float = 0.0
    max_steps: Optional[int] = None
    checkpoint_every: int = 1
    checkpoint_unit: str = "epoch"

    def __post_init__(self):
        s = self.SECTION
        need(self.epochs >= 1, s, f"epochs must be >= 1, got {self.epochs}")
        need(self.lr > 0, s, f"lr must be > 0, got {self.lr}")
        need(0 <= self.momentum < 1, s, f"momentum must lie in [0, 1), got {self.momentum}")
        need(self.weight_decay >= 0, s, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(self.warmup_steps >= 0, s, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        need(0 <= self.min_lr_ratio <= 1, s, f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        need(self.grad_clip >= 0, s, f"grad_clip must be >= 0, got {self.grad_clip}")
        need(self.max_steps is None or self.max_steps >= 1, s, f"max_steps must be >= 1 or null, got {self.max_steps}")
        need(self.checkpoint_every >= 0, s, f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        need(self.checkpoint_unit in ("epoch", "step"), s,
             f"checkpoint_unit must be 'epoch' or 'step', got {self.checkpoint_unit!r}")


# ------------------------------------------------------------------------------------------- shared training stages


@dataclass
class SparseStageConfig(TrainStageConfig):
    """Stage 1: training with the L1 subgradient on BatchNorm scales (`prunekit.train.regularizers.bn_l1`).

    Attributes:
        s: base rate of ``gamma.grad += s(t) * sign(gamma)``.
        schedule: ``constant`` | ``gcp_variable`` | ``linear_decay`` | ``cosine_decay``.
        schedule_args: the schedule's options (``{"relax_after": 0.4, "percentile": 0.65}``).
        unit: the schedule's clock, ``step`` or ``epoch`` (``step`` keeps short runs meaningful: a 1-epoch run
            with an epoch clock never reaches GCP's relax point).
        include / exclude: glob patterns over BatchNorm names.
        beta_factor: constant L1 on the BN shifts at ``beta_factor * s`` (paper 3's code: 10; 0 = off).
    """

    SECTION: ClassVar[str] = "stage1"

    s: float = 1e-3
    schedule: str = "gcp_variable"
    schedule_args: Dict[str, float] = field(default_factory=dict)
    unit: str = "step"
    include: Tuple[str, ...] = ("*",)
    exclude: Tuple[str, ...] = ()
    beta_factor: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        need(self.s >= 0 and self.beta_factor >= 0, self.SECTION, f"s and beta_factor must be >= 0, got {self.s}, "
             f"{self.beta_factor}")
        self.bnl1_config()  # validates schedule, its options and unit

    def bnl1_config(self):
        from ..train.regularizers.bn_l1 import BNL1Config

        try:
            return BNL1Config(s=self.s, schedule=self.schedule, schedule_args=dict(self.schedule_args), unit=self.unit,
                              include=tuple(self.include), exclude=tuple(self.exclude),
                              beta_rate=self.beta_factor * self.s)
        except ConfigError as exc:
            raise ConfigError(f"{self.SECTION}: {exc}") from None


def _loss_kind(name: str) -> str:
    """``features`` or ``logits``: what the registered distillation loss `name` compares ("" when unknown)."""
    from ..train.distill import DISTILL_LOSSES

    return getattr(DISTILL_LOSSES.get(name), "kind", "features") if name in DISTILL_LOSSES else ""


def _losses_of_kind(kind: str) -> list:
    from ..train.distill import DISTILL_LOSSES

    return [n for n in DISTILL_LOSSES.names() if _loss_kind(n) == kind]


@dataclass
class DistillConfig:
    """Stage 3's distillation from the unpruned teacher (section ``stage3.distill``).

    Attributes:
        feature_loss: a registered feature-map distillation loss (``prunekit ls distill_losses``: ``attention``,
            spatial attention transfer, paper 1; ``cwd``, channel-wise distillation, paper 3) or ``none``.
        feature_args: options of that loss's config (``{"betas": [1.0]}`` for attention); checked by name.
        layers: module-name patterns distilled; empty = the last module producing each feature-map scale
            (for the CIFAR ResNets: ``layer1``, ``layer2``, ``layer3``).
        weight: weight of the feature term (attention maps are tiny: paper 1 uses 1e3 to 1e6).
        tau: temperature of a feature loss that has one (CWD), unless `feature_args` sets it.
        logit_loss: the registered logit distillation loss of the logit term.
        logit_weight: weight of an added logit term (0 = off; paper 1's AT_str=3 adds output KD).
        temperature: temperature of the logit loss.
        teacher: ``sparse`` (the stage-1 model) or ``original`` (the model as loaded).
    """

    SECTION: ClassVar[str] = "stage3.distill"

    feature_loss: str = "attention"
    feature_args: Dict[str, Any] = field(default_factory=dict, metadata={"fingerprint": "unless-default"})
    layers: Tuple[str, ...] = ()
    weight: float = 1000.0
    tau: float = 1.0
    logit_loss: str = field(default="logit_kd", metadata={"fingerprint": "unless-default"})
    logit_weight: float = 0.0
    temperature: float = 4.0
    teacher: str = "sparse"

    def __post_init__(self):
        s = self.SECTION
        need(self.feature_loss == "none" or _loss_kind(self.feature_loss) == "features", s,
             f"feature_loss must be 'none' or a registered loss comparing feature maps "
             f"({', '.join(_losses_of_kind('features'))}), got {self.feature_loss!r}")
        need(_loss_kind(self.logit_loss) == "logits", s, f"logit_loss must be a registered loss comparing logits "
             f"({', '.join(_losses_of_kind('logits'))}), got {self.logit_loss!r}")
        need(self.weight >= 0 and self.logit_weight >= 0, s, "weight and logit_weight must be >= 0")
        need(self.tau > 0 and self.temperature > 0, s, "tau and temperature must be > 0")
        need(self.teacher in ("sparse", "original"), s, f"teacher must be 'sparse' or 'original', got {self.teacher!r}")
        self.layers = tuple(self.layers)
        if self.feature_loss != "none":
            self.feature_loss_args()  # checks feature_args against the loss's own options

    def feature_loss_args(self) -> Dict[str, Any]:
        """Options of the feature loss: `feature_args`, plus `tau` when the loss has such an option."""
        from ..config import from_dict
        from ..train.distill import DISTILL_LOSSES

        options = {f.name for f in dataclasses.fields(DISTILL_LOSSES.get(self.feature_loss).Config)}
        args = dict(self.feature_args)
        if "tau" in options:
            args.setdefault("tau", self.tau)
        from_dict(DISTILL_LOSSES.get(self.feature_loss).Config, args, prefix=f"{self.SECTION}.feature_args")
        return args

    def logit_loss_args(self) -> Dict[str, Any]:
        """Options of the logit loss: `temperature` when the loss has such an option."""
        from ..train.distill import DISTILL_LOSSES

        options = {f.name for f in dataclasses.fields(DISTILL_LOSSES.get(self.logit_loss).Config)}
        return {"temperature": self.temperature} if "temperature" in options else {}

    @property
    def active(self) -> bool:
        return (self.feature_loss != "none" and self.weight > 0) or self.logit_weight > 0


@dataclass
class FinetuneStageConfig(TrainStageConfig):
    """Stage 3: fine-tuning of the pruned model with the task loss plus distillation.

    Attributes:
        distill: the distillation terms (`DistillConfig`).
        bn_recalibrate: after fine-tuning, re-estimate the BatchNorm statistics on this many training images with
            the final weights (0 = off). Short fine-tunes, and distillation terms that move the weights fast, leave
            running statistics that lag the weights (`prunekit.train.bn_recalibrate`).
    """

    SECTION: ClassVar[str] = "stage3"

    distill: DistillConfig = field(default_factory=DistillConfig)
    bn_recalibrate: int = 2048

    def __post_init__(self):
        super().__post_init__()
        need(self.bn_recalibrate >= 0, self.SECTION, f"bn_recalibrate must be >= 0, got {self.bn_recalibrate}")


def scale_layers(model: nn.Module, inputs: torch.Tensor) -> List[str]:
    """For each feature-map size (H, W > 1) the model produces, the module that finishes last with that size.

    Args:
        model: an image model; inputs: ``[B, C, H, W]``.

    Returns:
        module names in order of first appearance of their scale (``["layer1", "layer2", "layer3"]`` for a CIFAR
        ResNet, whose stage containers finish after their blocks).
    """
    last: Dict[Tuple[int, int], str] = {}
    order: List[Tuple[int, int]] = []
    handles = []

    def hook(name):
        def record(module, args, out):
            if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[2] * out.shape[3] > 1:
                size = (int(out.shape[2]), int(out.shape[3]))
                if size not in last:
                    order.append(size)
                last[size] = name
        return record

    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(hook(name)))
        was = model.training
        model.eval()
        with torch.no_grad():
            model(inputs)
        model.train(was)
    finally:
        for h in handles:
            h.remove()
    return [last[size] for size in order]


def build_distiller(teacher: nn.Module, student: nn.Module, inputs: torch.Tensor, cfg: DistillConfig):
    """The `Distiller` hook for `cfg` (None when no term is active); returns (distiller, distilled layer names)."""
    from ..train.distill.taps import Distiller, DistillTerm

    if not cfg.active:
        return None, []
    layers = list(cfg.layers) or scale_layers(teacher, inputs)
    terms = []
    if cfg.feature_loss != "none" and cfg.weight > 0:
        if not layers:
            raise ConfigError(f"{cfg.SECTION}: no layer to distil (the model produces no spatial feature map)")
        terms.append(DistillTerm(loss=cfg.feature_loss, loss_args=cfg.feature_loss_args(), student=tuple(layers),
                                 weight=cfg.weight))
    if cfg.logit_weight > 0:
        terms.append(DistillTerm(loss=cfg.logit_loss, loss_args=cfg.logit_loss_args(), weight=cfg.logit_weight))
    return Distiller(teacher, terms), layers


def sparse_train_stage(ctx, cfg: SparseStageConfig):
    """Stage 1: train the task's model with BN-L1 sparsity (resumable); returns a `StageOutput`."""
    from ..train.regularizers.bn_l1 import BNL1, select_batchnorms
    from .base import StageOutput

    model = ctx.task.build()
    hook = BNL1(cfg.bnl1_config())
    run = ctx.task.train(model, cfg, ctx.folder, hooks=[hook])
    info = {"steps": run.steps, "train_loss": run.final_loss, "resumed_from": run.resumed_from}
    if not run.complete:
        return StageOutput(None, info=info, complete=False)
    gammas = torch.cat([bn.weight.detach().abs().flatten() for _, bn in select_batchnorms(model, cfg.include,
                                                                                          cfg.exclude)])
    info.update(ctx.task.score(model), gamma_median=float(gammas.median()),
                gamma_below_1e_2=float((gammas < 1e-2).float().mean()))
    return StageOutput(model, info=info)


def finetune_stage(ctx, cfg: FinetuneStageConfig, student_stage: str = "prune", teacher_stage: str = "sparse"):
    """Stage 3: fine-tune the pruned model with the task loss plus `cfg.distill` (resumable)."""
    from .base import StageOutput

    if cfg.distill.logit_weight > 0 and ctx.task.kind != "classification":
        raise ConfigError(f"{cfg.distill.SECTION}: logit_weight distils a classifier's logits; the task model "
                          f"'{ctx.task.cfg.model}' is a {ctx.task.kind} model (use feature_loss cwd or attention)")
    student = ctx.model(student_stage)
    plan = ctx.plan(student_stage)
    teacher = ctx.model(teacher_stage) if cfg.distill.teacher == "sparse" else ctx.task.build()
    distiller, layers = build_distiller(teacher, student, ctx.task.example_inputs(), cfg.distill)
    run = ctx.task.train(student, cfg, ctx.folder, hooks=[distiller] if distiller is not None else [])
    info = {"steps": run.steps, "train_loss": run.final_loss, "resumed_from": run.resumed_from,
            "distilled_layers": layers, "feature_loss": cfg.distill.feature_loss,
            "logit_weight": cfg.distill.logit_weight}
    if not run.complete:
        return StageOutput(None, info=info, complete=False)
    if cfg.bn_recalibrate:
        from ..train.bn_recalibrate import recalibrate_batchnorm

        metric = ctx.task.metric
        info[f"{metric}_before_bn_recalibration"] = ctx.task.score(student)[metric]
        images = ctx.task.calibration_images(cfg.bn_recalibrate)
        info["bn_recalibrated"] = recalibrate_batchnorm(student, images, ctx.task.cfg.eval_batch_size)
    info.update(ctx.task.score(student))
    return StageOutput(student, plan=plan, info=info)
