"""PreCropping: Structured Pruning is All You Need for Pruning CNNs at Initialization (Cai et al.), seed paper 8.

Two resumable stages in ``<out_dir>/1_crop`` and ``<out_dir>/2_train``:

- ``crop`` (section ``crop``): the task's architecture, randomly initialised (seeded), gets layer densities from a
  registered density source (``snip`` / ``grasp`` on one training batch, data-free ``synflow``, or the closed-form
  ``synexp`` under ``keep_params`` and/or ``keep_macs``), converted to channel multipliers over the engine's groups
  (`prunekit.widths.precrop`); the rounded `WidthConfig` is built by the engine into a freshly initialised narrower
  network, saved as safetensors + plan.json (``prunekit.load`` rebuilds it). With ``crop.from_config`` the stage
  instead builds a saved width config (a ``WidthConfig`` YAML/JSON, or a checkpoint folder made from one, e.g. TAS's):
  this is how a width config is trained from scratch from the CLI;
- ``train`` (section ``train``): that network trained from scratch with the reference loop (`finetune_stage`), with
  optional logit KD from the task's (pretrained) model (``train.distill.logit_weight > 0``; off by default).

Fidelity: densities and SynExp follow the paper (v1 for SNIP/GraSP/SynFlow, v2 for SynExp and reconfigure);
densities become multipliers by least squares in log space over the engine's groups (methods.md section 8
`[derived]`), then one common factor restores the budget. The reconfigure mode (widening) is available in the library
(`prunekit.widths.build_model`) but its result has no plan form, so this recipe refuses a crop that widens a group.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, List, Optional

from ..errors import ConfigError
from ..widths.precrop.crop import PreCropConfig
from .base import Recipe, RecipeConfig, Stage, StageContext, StageOutput
from .stages import DistillConfig, FinetuneStageConfig
from .task import TaskConfig, need


@dataclass
class CropStageConfig(PreCropConfig):
    """Section ``crop``: `PreCropConfig` plus `from_config`.

    Attributes:
        from_config: a saved `WidthConfig` (``.yaml`` / ``.json``) or a checkpoint folder written from one; when
            set, no densities are computed and the other keys (but `init`) are ignored.
        init: how the cropped network is initialised: ``kaiming`` (Kaiming normal for its new shape, the paper's
            "standard init") or ``reset`` (every module's own ``reset_parameters``).
    """

    from_config: Optional[str] = None
    init: str = "kaiming"

    def __post_init__(self):
        super().__post_init__()
        need(self.init in ("kaiming", "reset"), self.SECTION, f"init must be 'kaiming' or 'reset', got {self.init!r}")
        need(self.from_config is None or Path(self.from_config).exists(), self.SECTION,
             f"from_config {self.from_config} does not exist")


def _no_kd() -> DistillConfig:
    return DistillConfig(feature_loss="none", logit_weight=0.0, temperature=4.0, teacher="original")


@dataclass
class PreCropTrainConfig(FinetuneStageConfig):
    """Section ``train``: from-scratch training of the cropped network (SGD lr 0.1, wd 5e-4, cosine), no KD unless
    ``distill.logit_weight > 0`` (teacher: the task's model as loaded, which must then be trained)."""

    SECTION: ClassVar[str] = "train"

    epochs: int = 1
    lr: float = 0.1
    weight_decay: float = 5e-4
    bn_recalibrate: int = 0
    distill: DistillConfig = field(default_factory=_no_kd)


def _scratch_task() -> TaskConfig:
    return TaskConfig(model="cifar_resnet20_b", pretrained=False)


@dataclass
class PreCropRecipeConfig(RecipeConfig):
    """The precrop recipe: task (default: ResNet-20 option B from scratch on CIFAR-10), ``crop``, ``train``."""

    VERSION: ClassVar[int] = 1

    out_dir: str = "runs/precrop"
    task: TaskConfig = field(default_factory=_scratch_task)
    crop: CropStageConfig = field(default_factory=CropStageConfig)
    train: PreCropTrainConfig = field(default_factory=PreCropTrainConfig)

    def __post_init__(self):
        super().__post_init__()
        if self.train.distill.active and not (self.task.pretrained or self.task.weights):
            raise ConfigError("train.distill: KD needs a trained teacher; set task.pretrained: true or task.weights "
                              "(the teacher is the task's model as loaded)")


class PreCropRecipe(Recipe):
    """Paper 8 (PreCropping): widths from layer densities at initialisation, trained from scratch."""

    name = "precrop"
    Config = PreCropRecipeConfig
    fidelity = ("reconstructed from the paper (no official code): SNIP/GraSP/SynFlow densities (v1) and SynExp "
                "water-filling (v2); densities -> multipliers by log-space least squares over the engine's groups "
                "(ties across residual adds and depthwise convs), re-normalised to the budget; fresh init; "
                "reconfigure mode in the library only")

    def stages(self) -> List[Stage]:
        from .stages import finetune_stage

        return [Stage("crop", ("crop",), self._crop),
                Stage("train", ("train",),
                      lambda ctx: finetune_stage(ctx, self.config.train, student_stage="crop",
                                                 teacher_stage="crop"))]

    def _crop(self, ctx: StageContext) -> StageOutput:
        import torch

        import prunekit
        from ..widths import WidthConfig, build_model
        from ..widths.precrop import precrop

        task, cfg = ctx.task, self.config.crop
        torch.manual_seed(self.config.seed)
        model, x = task.architecture(), task.example_inputs(2)
        analysis = prunekit.analyze(model, x)
        info = {}
        if cfg.from_config is not None:
            width = WidthConfig.load(cfg.from_config)
            info["from_config"] = str(cfg.from_config)
        else:
            batch = None
            if cfg.density in ("snip", "grasp"):
                items = task.calibration_items(cfg.batch_size)
                batch = (torch.stack([item[0] for item in items]), torch.tensor([int(item[1]) for item in items]))
            result = precrop(model, x, cfg, batch=batch, analysis=analysis, model_spec=task.model_spec())
            width = result.config
            info.update({k: v for k, v in result.facts.items()},
                        densities={k: round(v, 5) for k, v in result.densities.items()})
        if width.widened():
            raise ConfigError(f"crop: the config widens groups {sorted(width.widened())[:6]}; the recipe saves "
                              f"models in the plan format, which only removes units. Use reconfigure with a budget "
                              f"that does not widen, or prunekit.widths.build_model directly")
        if not width.model_spec:
            width.model_spec = task.model_spec()
        small = build_model(width, model, x, seed=self.config.seed, init=cfg.init)
        plan = small.prunekit_width_plan
        info.update(task.cost(small), width_fractions={g: round(f, 4) for g, f in width.fractions().items()},
                    kept=dict(width.kept))
        return StageOutput(small, plan=plan, info=info)
