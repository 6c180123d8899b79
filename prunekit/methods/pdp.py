"""PDP: parameter-free differentiable pruning (paper 4) as a recipe: sparsify, then fine-tune with frozen masks.

Cho, Adya, Naik, "PDP: Parameter-free Differentiable Pruning is All You Need", NeurIPS 2023 (arXiv 2305.11203).
Two stages, each in its own resumable folder (see `prunekit.methods.base`):

1. **sparsify** - training with PDP's soft masks (`prunekit.train.pdp`): warm-up, per-layer targets from one global
   magnitude sort, the linear ramp, the threshold recomputed at every step, a per-layer scale-normalised
   temperature; then hardening. ``method: gmp`` (Zhu and Gupta's cubic schedule) and ``method: oneshot``
   (magnitude pruning at step 0) run the baselines on the same hooks. Unstructured and N:M stages save the hard
   masks bit-packed beside the weights (``model/masks.json`` + ``model/masks.safetensors``); the channel pattern
   ends as a physically smaller model plus its pruning plan.
2. **finetune** - training with the masks frozen (unstructured / N:M) or of the pruned model (channel); the stored
   masks are verified (every masked weight zero, N:M groups exact) before the stage is marked done.

Fidelity: the mask, threshold, ramp and hardening follow the paper's description; the temperature normalisation
(``temperature * mean(W^2)`` per layer) and the N:M ramp (the mask blended in) are this implementation's choices.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional, Tuple

from ..errors import ConfigError
from .base import Recipe, RecipeConfig, Stage, StageContext, StageOutput
from .stages import TrainStageConfig
from .task import need


@dataclass
class PDPSparsifyConfig(TrainStageConfig):
    """Stage 1 of the pdp recipe (see `prunekit.train.pdp.config.PDPConfig` for the sparsity fields).

    Attributes:
        method: ``pdp`` | ``gmp`` | ``oneshot``.
        pattern: ``unstructured``, ``"2:4"`` / ``"1:4"`` / ``"4:8"`` (quoted in YAML), or ``channel``.
        sparsity: final fraction pruned (ignored for N:M).
        allocation: ``global`` or ``uniform`` per-layer targets (unstructured).
        warmup_epochs / ramp_epochs: dense epochs first, then epochs over which the target grows.
        temperature: PDP's dimensionless temperature (per layer: ``temperature * mean(W^2)``); null: 0.1, or 0.005
            for channels.
        update_every: GMP's steps between mask updates.
        include / exclude: module-name glob patterns.
        min_keep: channels every group keeps (channel pattern).
    """

    SECTION: ClassVar[str] = "stage1"

    epochs: int = 8
    method: str = "pdp"
    pattern: str = "unstructured"
    sparsity: float = 0.9
    allocation: str = "global"
    warmup_epochs: float = 1.0
    ramp_epochs: float = 4.0
    temperature: Optional[float] = None
    update_every: int = 10
    include: Tuple[str, ...] = ()
    exclude: Tuple[str, ...] = ()
    min_keep: int = 1

    def __post_init__(self):
        super().__post_init__()
        need(self.method in ("pdp", "gmp", "oneshot"), self.SECTION,
             f"method must be 'pdp', 'gmp' or 'oneshot', got {self.method!r}")
        need(self.warmup_epochs + self.ramp_epochs <= self.epochs, self.SECTION,
             f"warmup_epochs + ramp_epochs ({self.warmup_epochs + self.ramp_epochs}) must fit in epochs "
             f"({self.epochs}), or hardening would cut the ramp short")
        self.sparsity_config()  # validates pattern, sparsity, temperature...

    def sparsity_config(self):
        from ..train.pdp.config import GMPConfig, PDPConfig

        common = dict(pattern=self.pattern, sparsity=self.sparsity, allocation=self.allocation,
                      warmup_epochs=self.warmup_epochs, ramp_epochs=self.ramp_epochs, include=tuple(self.include),
                      exclude=tuple(self.exclude), min_keep=self.min_keep)
        try:
            if self.method == "pdp":
                return PDPConfig(**common, temperature=self.temperature)
            return GMPConfig(**common, update_every=self.update_every)
        except ConfigError as exc:
            raise ConfigError(f"{self.SECTION}: {exc}") from None


@dataclass
class PDPFinetuneConfig(TrainStageConfig):
    """Stage 2 of the pdp recipe: fine-tuning with frozen masks (or of the channel-pruned model)."""

    SECTION: ClassVar[str] = "stage2"

    epochs: int = 2
    lr: float = 0.005


@dataclass
class PDPRecipeConfig(RecipeConfig):
    """The pdp recipe: task plus two stages (see the module docstring)."""

    VERSION: ClassVar[int] = 1

    out_dir: str = "runs/pdp"
    stage1: PDPSparsifyConfig = field(default_factory=PDPSparsifyConfig)
    stage2: PDPFinetuneConfig = field(default_factory=PDPFinetuneConfig)


class PDPRecipe(Recipe):
    """Paper 4 (PDP): soft masks from the weights themselves, for unstructured, N:M and channel sparsity, with
    gradual-magnitude and one-shot baselines on the same hooks. Config: `PDPRecipeConfig`."""

    name = "pdp"
    Config = PDPRecipeConfig
    fidelity = "mask, threshold, ramp, hardening as in the paper; temperature normalisation and N:M ramp chosen here"

    def stages(self):
        return [Stage("sparsify", ("stage1",), self.sparsify), Stage("finetune", ("stage2",), self.finetune)]

    def sparsify(self, ctx: StageContext) -> StageOutput:
        from ..train.pdp import make_sparsifier

        cfg = self.config.stage1
        spc = cfg.sparsity_config()
        model = ctx.task.build()
        inputs = ctx.task.example_inputs()
        sparsifier = make_sparsifier(cfg.method, spc, inputs=inputs)
        run = ctx.task.train(model, cfg, ctx.folder, hooks=[sparsifier])
        if not run.complete:
            return StageOutput(None, complete=False)
        info = {"method": cfg.method, "pattern": cfg.pattern, "steps": run.steps, "final_loss": run.final_loss}
        if getattr(sparsifier, "history", None):
            _, soft, undecided = sparsifier.history[-1]
            info.update(soft_sparsity=soft, undecided=undecided)
        if hasattr(sparsifier, "summary"):
            info.update({k: v for k, v in sparsifier.summary().items() if k != "skipped"})
        if spc.kind == "channel":
            pruned, plan = sparsifier.harden(model, model_spec=ctx.task.model_spec())
            info.update(removed_channels=sum(len(v) for v in plan.removed.values()),
                        verified=bool(pruned.prunekit_verification.passed), **ctx.task.score(pruned))
            return StageOutput(pruned.eval(), plan=plan, info=info)
        masks = sparsifier.harden(model, freeze=False)
        masks.save(ctx.folder / "model")
        info.update(hard_sparsity=masks.sparsity(), dense_layers=sorted(sparsifier.skipped),
                    **ctx.task.score(model))
        return StageOutput(model.eval(), info=info)

    def finetune(self, ctx: StageContext) -> StageOutput:
        from ..train.pdp import MaskSet, finish
        from ..train.pdp.artifact import INDEX_FILE
        from ..train.pdp.cost import sparse_macs

        cfg = self.config.stage2
        model = ctx.model("sparsify")
        plan = ctx.plan("sparsify")
        source = ctx.folders["sparsify"] / "model"
        masks = MaskSet.load(source) if (source / INDEX_FILE).exists() else None
        if masks is not None:
            masks.freeze(model)
        run = ctx.task.train(model, cfg, ctx.folder, hooks=())
        if not run.complete:
            return StageOutput(None, complete=False)
        info = {"steps": run.steps, "final_loss": run.final_loss}
        if masks is not None:
            finish(model)
            report = masks.verify(model)
            if not report["passed"]:
                raise ConfigError(f"pdp finetune: the fine-tuned weights break their masks ({report['nm_violations']} "
                                  f"N:M violations, {report['nonzero_masked']} masked weights non-zero)")
            masks.save(ctx.folder / "model")
            cost = sparse_macs(model.eval(), ctx.task.example_inputs(1), masks)
            info.update(hard_sparsity=masks.sparsity(), masks_verified=True, nm_entries=report["nm_entries"],
                        sparse_macs=cost["sparse_macs"], dense_macs=cost["dense_macs"])
        info.update(ctx.task.score(model))
        return StageOutput(model.eval(), plan=plan, info=info)
