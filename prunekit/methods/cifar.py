"""Image-classification task glue shared by the recipes: data, model, training stages and metrics.

The recipes of papers 1 and 3 are written for detectors; on this project's data they run on image classifiers
(CIFAR-10 JPEG with the option-B ResNet-56, or the scikit-learn digits with `digits_cnn` for tests). A
`ClassificationTask` builds the registered model and datasets once, trains a model for one stage with the reference
loop (`prunekit.train.loop.train`, checkpointed and resumable), and measures accuracy, parameters, MACs and latency.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError

#: Config keys that steer a run without changing its result (left out of stage fingerprints).
RUN_CONTROL = frozenset({"max_steps", "checkpoint_every", "checkpoint_unit", "progress", "device", "num_threads",
                         "latency_batch", "latency_threads", "latency_repeats", "eval_original"})


def need(ok: bool, section: str, message: str) -> None:
    """Raise `ConfigError` naming the config section when `ok` is false."""
    if not ok:
        raise ConfigError(f"{section}: {message}")


@dataclass
class TaskConfig:
    """The model and data a recipe runs on (section ``task``).

    Attributes:
        model: a `prunekit.models` registry name (its `ModelInfo` gives the input shape and normalisation).
        dataset: a `prunekit.data` registry name with ``train`` / ``test`` splits of ``(image, label)`` items.
        pretrained: load the model's real weights.
        train_subset: train on a seeded random subset of this many images (None: the whole split). A random subset,
            not the first N: the CIFAR-10 JPEG train split is ordered by class.
        test_limit: evaluate on the first N test images (the test split is in canonical, mixed order).
        subset_seed: seed of the train subset.
        augment: ``"standard"`` (random crop + flip, 32x32 images) or None.
        batch_size / eval_batch_size: images per training / evaluation step.
        device: ``"auto"`` | ``"cpu"`` | ``"cuda"``.
        num_threads: ``torch.set_num_threads`` for the run (None: leave as is).
        latency_batch / latency_threads / latency_repeats: CPU latency measurement of the final model.
        eval_original: also evaluate the unpruned model's accuracy and latency (one extra test pass).
    """

    SECTION: ClassVar[str] = "task"

    model: str = "cifar_resnet56_b"
    dataset: str = "cifar10"
    pretrained: bool = True
    train_subset: Optional[int] = None
    test_limit: Optional[int] = None
    subset_seed: int = 0
    augment: Optional[str] = "standard"
    batch_size: int = 128
    eval_batch_size: int = 256
    device: str = "auto"
    num_threads: Optional[int] = None
    latency_batch: int = 1
    latency_threads: int = 1
    latency_repeats: int = 30
    eval_original: bool = True

    def __post_init__(self):
        s = self.SECTION
        need(self.train_subset is None or self.train_subset >= 1, s,
             f"train_subset must be >= 1, got {self.train_subset}")
        need(self.test_limit is None or self.test_limit >= 1, s, f"test_limit must be >= 1, got {self.test_limit}")
        need(self.augment in (None, "standard"), s, f"augment must be 'standard' or null, got {self.augment!r}")
        need(self.batch_size >= 1 and self.eval_batch_size >= 1, s, "batch sizes must be >= 1")
        need(self.num_threads is None or self.num_threads >= 1, s, f"num_threads must be >= 1, got {self.num_threads}")
        need(self.latency_batch >= 1 and self.latency_threads >= 1 and self.latency_repeats >= 1, s,
             "latency_batch, latency_threads and latency_repeats must be >= 1")


@dataclass
class TrainStageConfig:
    """Optimiser settings of one training stage (the recipes' stage 1 and stage 3 extend it).

    Attributes:
        epochs: passes over the (sub)set. lr: peak learning rate (cosine to 0). momentum, weight_decay: SGD.
        warmup_steps: linear warm-up steps.
        max_steps: stop after this many steps and leave the stage unfinished (resumable; for smoke runs and tests).
        checkpoint_every / checkpoint_unit: training checkpoints inside the stage folder, for resuming.
    """

    SECTION: ClassVar[str] = "stage"

    epochs: int = 1
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 0
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
        need(self.max_steps is None or self.max_steps >= 1, s, f"max_steps must be >= 1 or null, got {self.max_steps}")
        need(self.checkpoint_every >= 0, s, f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        need(self.checkpoint_unit in ("epoch", "step"), s,
             f"checkpoint_unit must be 'epoch' or 'step', got {self.checkpoint_unit!r}")


@dataclass
class StageRun:
    """Outcome of `ClassificationTask.train`: whether the stage finished, its steps and last training loss."""

    complete: bool
    steps: int
    epochs: int
    final_loss: float
    seconds: float
    resumed_from: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)


class ClassificationTask:
    """A registered classifier plus its dataset, with training and measurement helpers.

    Args:
        cfg: the task section of a recipe config.
        seed: seed of every training stage (the loop seeds python, numpy, torch and the data order from it).
    """

    def __init__(self, cfg: TaskConfig, seed: int = 0):
        from ..models import info

        self.cfg, self.seed = cfg, seed
        meta = info(cfg.model)
        if meta.input_shape is None or meta.task != "classification":
            raise ConfigError(f"task: model '{cfg.model}' is a {meta.task} model; the recipes' task glue needs an "
                              f"image classifier")
        self.input_shape: Tuple[int, ...] = tuple(meta.input_shape)
        self.normalize = (meta.mean, meta.std) if meta.mean is not None else None
        self._train = self._test = None

    # ------------------------------------------------------------------------------------------------ data / model
    def build(self, pretrained: Optional[bool] = None) -> nn.Module:
        """The registered model (real weights when `pretrained`, default the config's), in eval mode."""
        from ..models import build

        return build(self.cfg.model, pretrained=self.cfg.pretrained if pretrained is None else pretrained).eval()

    def example_inputs(self, batch: int = 2, seed: int = 0) -> torch.Tensor:
        """Deterministic random inputs ``[batch, *input_shape]`` for tracing, planning and bias folding."""
        return torch.randn((batch, *self.input_shape), generator=torch.Generator().manual_seed(seed))

    @property
    def train_set(self):
        """The training split (augmented, normalised), restricted to the seeded subset."""
        if self._train is None:
            from ..data import load

            full = load(self.cfg.dataset, split="train", augment=self.cfg.augment, normalize=self.normalize)
            self._train = _random_subset(full, self.cfg.train_subset, self.cfg.subset_seed)
        return self._train

    @property
    def test_set(self):
        """The first `test_limit` test images (normalised, no augmentation)."""
        if self._test is None:
            from ..data import load

            self._test = load(self.cfg.dataset, split="test", normalize=self.normalize, limit=self.cfg.test_limit)
        return self._test

    # ------------------------------------------------------------------------------------------------- training
    def train(self, model: nn.Module, stage: TrainStageConfig, folder: Path, hooks: Sequence[Any] = ()) -> StageRun:
        """Train `model` in place for one stage, checkpointing into ``folder/ckpt`` and resuming from it.

        Returns:
            a `StageRun`; ``complete`` is False when `stage.max_steps` stopped the run early.
        """
        from ..train.loop import TrainConfig, train

        cfg = TrainConfig(epochs=stage.epochs, lr=stage.lr, momentum=stage.momentum, weight_decay=stage.weight_decay,
                          batch_size=self.cfg.batch_size, warmup_steps=stage.warmup_steps, seed=self.seed,
                          checkpoint_dir=str(Path(folder) / "ckpt"), checkpoint_every=stage.checkpoint_every,
                          checkpoint_unit=stage.checkpoint_unit, resume=True, device=self.cfg.device,
                          max_steps=stage.max_steps, log_every=10)
        result = train(model, self.train_set, cfg, hooks=hooks)
        model.cpu().eval()
        complete = result.epochs >= stage.epochs
        return StageRun(complete, result.steps, result.epochs, float(result.final_loss), result.seconds,
                        result.resumed_from)

    def calibration_batch(self, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """``n`` training images (augmented as in training, drawn under a fixed seed) and labels: [n, C, H, W], [n]."""
        n = min(n, len(self.train_set))
        with torch.random.fork_rng():
            torch.manual_seed(self.seed + 12345)
            index = torch.randperm(len(self.train_set))[:n].tolist()
            items = [self.train_set[i] for i in index]
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])

    # ------------------------------------------------------------------------------------------------- metrics
    def accuracy(self, model: nn.Module) -> float:
        """Top-1 accuracy in [0, 1] on the test images."""
        from ..metrics.accuracy import evaluate_accuracy

        return float(evaluate_accuracy(model, self.test_set, batch_size=self.cfg.eval_batch_size, progress=False))

    def cost(self, model: nn.Module) -> Dict[str, float]:
        """Parameters and MACs of one image (batch 1)."""
        from ..metrics.macs import count_macs
        from ..metrics.params import count_parameters

        model = model.cpu().eval()
        return {"params": int(count_parameters(model)), "macs": int(count_macs(model, self.example_inputs(1)))}

    def latency_ms(self, model: nn.Module) -> float:
        """Median eager CPU latency in ms of a batch of `latency_batch` images (`latency_threads` threads)."""
        from ..metrics.latency import eager_latency

        model = model.cpu().eval()
        x = self.example_inputs(self.cfg.latency_batch)
        return float(eager_latency(model, x, warmup=5, repeats=self.cfg.latency_repeats,
                                   threads=self.cfg.latency_threads).median_ms)

    def measure(self, model: nn.Module, latency: bool = True) -> Dict[str, float]:
        """Accuracy, params, MACs and (optionally) latency of `model`."""
        out = {"accuracy": self.accuracy(model), **self.cost(model)}
        if latency:
            out["latency_ms"] = self.latency_ms(model)
        return out


def _random_subset(dataset, n: Optional[int], seed: int):
    """A seeded random subset of an `ImageArrayDataset` (sorted indices, sharing its transform)."""
    if n is None or n >= len(dataset):
        return dataset
    from ..data.array_dataset import ImageArrayDataset

    index = np.sort(np.random.RandomState(seed).permutation(len(dataset))[:n])
    index_t = torch.as_tensor(index)
    return ImageArrayDataset(dataset.images[index_t], dataset.labels[index_t], dataset.classes, dataset.transform,
                             f"{dataset.name}[subset {n}, seed {seed}]")


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


@dataclass
class DistillConfig:
    """Stage 3's distillation from the unpruned teacher (section ``stage3.distill``).

    Attributes:
        feature_loss: ``attention`` (spatial attention transfer, paper 1), ``cwd`` (channel-wise distillation,
            paper 3) or ``none``.
        layers: module-name patterns distilled; empty = the last module producing each feature-map scale
            (for the CIFAR ResNets: ``layer1``, ``layer2``, ``layer3``).
        weight: weight of the feature term (attention maps are tiny: paper 1 uses 1e3 to 1e6).
        tau: CWD temperature.
        logit_weight: weight of an added logit-KD term (0 = off; paper 1's AT_str=3 adds output KD).
        temperature: logit-KD temperature.
        teacher: ``sparse`` (the stage-1 model) or ``original`` (the model as loaded).
    """

    SECTION: ClassVar[str] = "stage3.distill"

    feature_loss: str = "attention"
    layers: Tuple[str, ...] = ()
    weight: float = 1000.0
    tau: float = 1.0
    logit_weight: float = 0.0
    temperature: float = 4.0
    teacher: str = "sparse"

    def __post_init__(self):
        s = self.SECTION
        need(self.feature_loss in ("attention", "cwd", "none"), s,
             f"feature_loss must be 'attention', 'cwd' or 'none', got {self.feature_loss!r}")
        need(self.weight >= 0 and self.logit_weight >= 0, s, "weight and logit_weight must be >= 0")
        need(self.tau > 0 and self.temperature > 0, s, "tau and temperature must be > 0")
        need(self.teacher in ("sparse", "original"), s, f"teacher must be 'sparse' or 'original', got {self.teacher!r}")
        self.layers = tuple(self.layers)

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
        args = {"betas": (1.0,)} if cfg.feature_loss == "attention" else {"tau": cfg.tau}
        terms.append(DistillTerm(loss=cfg.feature_loss, loss_args=args, student=tuple(layers), weight=cfg.weight))
    if cfg.logit_weight > 0:
        terms.append(DistillTerm(loss="logit_kd", loss_args={"temperature": cfg.temperature}, weight=cfg.logit_weight))
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
    info.update(accuracy=ctx.task.accuracy(model), gamma_median=float(gammas.median()),
                gamma_below_1e_2=float((gammas < 1e-2).float().mean()))
    return StageOutput(model, info=info)


def finetune_stage(ctx, cfg: FinetuneStageConfig, student_stage: str = "prune", teacher_stage: str = "sparse"):
    """Stage 3: fine-tune the pruned model with the task loss plus `cfg.distill` (resumable)."""
    from .base import StageOutput

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

        info["accuracy_before_bn_recalibration"] = ctx.task.accuracy(student)
        images, _ = ctx.task.calibration_batch(cfg.bn_recalibrate)
        info["bn_recalibrated"] = recalibrate_batchnorm(student, images, ctx.task.cfg.eval_batch_size)
    info["accuracy"] = ctx.task.accuracy(student)
    return StageOutput(student, plan=plan, info=info)


@torch.no_grad()
def adaptive_bn_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 128) -> float:
    """Cross-entropy of a copy of `model` whose BatchNorm statistics are re-estimated on `images` first.

    Scoring a freshly pruned candidate with its stale statistics mostly measures the statistics shift; re-estimating
    them (EagleEye's "adaptive BN") makes the score track the accuracy reachable after fine-tuning.

    Args:
        model: the candidate (not modified). images: [N, C, H, W]; labels: [N].
    """
    import copy

    import torch.nn.functional as F

    from ..train.bn_recalibrate import recalibrate_batchnorm

    work = copy.deepcopy(model)
    recalibrate_batchnorm(work, images, batch)
    total = sum(float(F.cross_entropy(work(images[i:i + batch]), labels[i:i + batch], reduction="sum"))
                for i in range(0, len(images), batch))
    return total / len(images)
