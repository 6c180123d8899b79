"""TAS: Network Pruning via Transformable Architecture Search (Dong & Yang, NeurIPS 2019), seed paper 7.

Two resumable stages in ``<out_dir>/1_search`` and ``<out_dir>/2_train``:

- ``search`` (section ``search``): the task's model (pretrained weights as the supernet's starting point) is put into
  the TAS search space (`prunekit.widths.tas`: groups from the engine's analysis, candidate widths 0.3..1.0 of each,
  per-candidate BatchNorm, Gumbel sampling of two candidates, masked-channel alignment), searched bi-level on a 50/50
  split of the training data under the step cost loss around ``keep_macs`` of the MACs; the argmax widths become a
  `WidthConfig` and a freshly initialised narrower network (saved as safetensors + plan.json);
- ``train`` (section ``train``): that network trained from scratch with logit KD from the unpruned model
  (`finetune_stage`: the reference loop plus the `Distiller`'s ``logit_kd`` term, teacher ``original``).

Fidelity: the paper's search space, sampling, per-width BN, expected-FLOP cost and step loss, bi-level optimisers
and KD (T = 4); deviations: channel alignment by masking on a shared full-width supernet instead of adaptive channel
pooling, the supernet starts from the pretrained weights, the temperature is annealed per step, the loss is
``CE + logit_weight * KD`` (the loop adds the task loss at weight 1; 9 is the paper's alpha = 0.9 up to a learning-rate
scale), and width search only (no depth search).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, List

from ..widths.tas.search import TASSearchConfig
from .base import Recipe, RecipeConfig, Stage, StageContext, StageOutput
from .stages import DistillConfig, FinetuneStageConfig


def _kd_only() -> DistillConfig:
    return DistillConfig(feature_loss="none", logit_weight=9.0, temperature=4.0, teacher="original")


@dataclass
class TASTrainConfig(FinetuneStageConfig):
    """Training of the derived network (section ``train``): `FinetuneStageConfig` with logit KD from the unpruned
    model by default (feature loss off, ``logit_weight`` 9, T = 4, teacher ``original``), SGD lr 0.01, wd 5e-4.

    ``CE + 9 * KD`` at lr 0.01 is the paper's ``0.1 * CE + 0.9 * KD`` at lr 0.1 (the loop adds the task loss at weight
    1; scaling a loss by 10 is scaling SGD's learning rate by 10)."""

    SECTION: ClassVar[str] = "train"

    epochs: int = 1
    lr: float = 0.01
    weight_decay: float = 5e-4
    distill: DistillConfig = field(default_factory=_kd_only)


@dataclass
class TASConfig(RecipeConfig):
    """The tas recipe: task, search (``search``: `TASSearchConfig`), training of the derived net (``train``)."""

    VERSION: ClassVar[int] = 1

    out_dir: str = "runs/tas"
    search: TASSearchConfig = field(default_factory=TASSearchConfig)
    train: TASTrainConfig = field(default_factory=TASTrainConfig)


class TASRecipe(Recipe):
    """Paper 7 (TAS): differentiable width search, then the derived network trained with KD. Config: `TASConfig`."""

    name = "tas"
    Config = TASConfig
    fidelity = ("reconstructed from the paper and author code: search space, Gumbel top-2 sampling, per-width BN, "
                "expected-MACs step loss, bi-level optimisers, KD; masked-channel alignment, pretrained supernet "
                "start, per-step tau annealing; widths only (no depth search)")

    def stages(self) -> List[Stage]:
        from .stages import finetune_stage

        return [Stage("search", ("search",), self._search),
                Stage("train", ("train",),
                      lambda ctx: finetune_stage(ctx, self.config.train, student_stage="search",
                                                 teacher_stage="search"))]

    def _search(self, ctx: StageContext) -> StageOutput:
        import torch

        import prunekit
        from ..widths.tas import TASSupernet, build_searched, search, searchable_groups, tas_width_config

        task, cfg = ctx.task, self.config.search
        if task.kind != "classification":
            from ..errors import ConfigError

            raise ConfigError(f"search: tas searches classifiers (cross-entropy); '{task.cfg.model}' is a "
                              f"{task.kind} model")
        torch.manual_seed(self.config.seed)  # a model without pretrained weights is initialised reproducibly
        model, x = task.build(), task.example_inputs(1)
        analysis = prunekit.analyze(model, x)
        searched = searchable_groups(analysis.groups, cfg.fractions, cfg.ignore)
        net = TASSupernet(model, searched, x, cfg.init_std)
        device = "cuda" if task.cfg.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
        result = search(net, task.train_set, cfg, seed=self.config.seed, checkpoint_dir=str(ctx.folder / "ckpt"),
                        device=device)
        info = {**result.summary(), "searched_groups": {s.id: list(s.widths) for s in searched}}
        if not result.complete:
            return StageOutput(None, info=info, complete=False)
        config = tas_width_config(analysis, result.widths, model, x, task.model_spec(), keep_macs=cfg.keep_macs,
                                  derived_from=result.derived_from)
        small, plan = build_searched(config, analysis, task.architecture(), x, seed=self.config.seed)
        info.update(task.cost(small), width_fractions={gid: result.widths[gid] / s.size
                                                       for gid, s in ((s.id, s) for s in searched)})
        return StageOutput(small, plan=plan, info=info)
