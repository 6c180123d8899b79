"""Slim-CWD: sparsity-aware training, scaling-factor pruning, channel-wise distillation (paper 3).

Sabaghian, Keyvanrad, Moghadami, "A Novel Compression Framework for YOLOv8", arXiv 2509.12918 (VisDrone). Three
stages, each in its own resumable folder (see `prunekit.methods.base`):

1. **sparse** - BN-L1 with the linearly decaying rate ``s(e) = s0 * (1 - 0.9 * e / E)`` (`linear_decay`), plus the
   author code's constant L1 on the BN shifts at ``10 * s0`` (``beta_factor``, 0 turns it off).
2. **prune** - channels ranked by |gamma|: the same ratio in every layer (``allocator: uniform``, the paper's text,
   default) or one global threshold over every group (``allocator: global``, the author repo); the budget is a
   MACs fraction (searched) or a channel ratio. Residual-coupled channels are pruned as groups (the repo instead
   leaves them out). The removed channels' constant output is folded into the next layer before removal.
3. **finetune** - fine-tuning with the task loss plus channel-wise distillation (Shu et al. 2021: per-channel
   spatial softmax at temperature tau, KL, tau^2 / (N*C)), a 1x1 adapter aligning the pruned widths.

Fidelity: the sparse rule and pruning follow the author code; the CWD layers, tau and weight were not in it
(reconstructed: mmrazor's formula, tau 1, on the last layer of every feature-map scale).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .base import PruneStageConfig, RecipeConfig, SparsePruneFinetuneRecipe, StageOutput, prune_with_folding
from .stages import DistillConfig, FinetuneStageConfig, SparseStageConfig
from .task import need


@dataclass
class SlimPruneConfig(PruneStageConfig):
    """Stage 2 of slim-cwd. Attributes: allocator: ``uniform`` (the same fraction of every layer, the paper's text)
    or ``global`` (one |gamma| threshold over every layer, the author repo)."""

    allocator: str = "uniform"

    def __post_init__(self):
        super().__post_init__()
        need(self.allocator in ("global", "uniform"), self.SECTION,
             f"allocator must be 'global' or 'uniform', got {self.allocator!r}")


@dataclass
class SlimSparseConfig(SparseStageConfig):
    """Stage 1 of slim-cwd: linear-decay BN-L1 from s0 = 1e-4 plus the shifts' L1 at 10 * s0."""

    s: float = 1e-4
    schedule: str = "linear_decay"
    beta_factor: float = 10.0


@dataclass
class SlimDistillConfig(DistillConfig):
    """Stage 3 distillation of slim-cwd: channel-wise distillation, tau 1, weight 1 (mmrazor defaults)."""

    feature_loss: str = "cwd"
    weight: float = 1.0
    tau: float = 1.0


@dataclass
class SlimFinetuneConfig(FinetuneStageConfig):
    """Stage 3 of slim-cwd."""

    distill: SlimDistillConfig = field(default_factory=SlimDistillConfig)


@dataclass
class SlimCWDConfig(RecipeConfig):
    """The slim-cwd recipe: task plus three stages (see the module docstring)."""

    VERSION: ClassVar[int] = 1

    out_dir: str = "runs/slim_cwd"
    stage1: SlimSparseConfig = field(default_factory=SlimSparseConfig)
    stage2: SlimPruneConfig = field(default_factory=SlimPruneConfig)
    stage3: SlimFinetuneConfig = field(default_factory=SlimFinetuneConfig)


class SlimCWDRecipe(SparsePruneFinetuneRecipe):
    """Paper 3 (YOLOv8 compression framework): sparsity-aware training, BN-scale pruning (global or uniform) with
    bias folding, channel-wise distillation. Config: `SlimCWDConfig`."""

    name = "slim-cwd"
    Config = SlimCWDConfig
    fidelity = "as in the author code (stages 1-2); CWD settings reconstructed"

    def prune(self, ctx) -> StageOutput:
        import prunekit

        cfg = self.config.stage2
        model = ctx.model("sparse")
        inputs = ctx.task.example_inputs()
        analysis = prunekit.analyze(model, inputs)
        options = {"normalizer": "none"} if cfg.allocator == "global" else {}
        pruned, plan, facts = prune_with_folding(model, inputs, analysis, cfg, "bn_scale", cfg.allocator,
                                                 {"reduction": "mean"}, options, ctx.task.model_spec())
        info = {"allocator": cfg.allocator, **facts, **ctx.task.score(pruned), **ctx.task.cost(pruned)}
        return StageOutput(pruned, plan=plan, info=info)
