"""FTWT: Fire Together Wire Together, dynamic channel pruning with self-supervised mask prediction (paper 9).

Elkerdawy, Elhoushi, Zhang, Ray, CVPR 2022. From the task's (pretrained) model: attach one mask predictor per
engine channel group that a single conv produces and one gate per other conv (`prunekit.dynamic`), fit the
predictors on cached features and/or warm them up on the frozen model,
train backbone and predictors with the masks on (mask loss switched off after the cool-down), then measure the
masked model: accuracy, mean / spread of per-input MACs, predictor agreement, and batch-1 latency of the gathered
execution path against the dense model. The dynamic model is saved as ``model.safetensors`` + ``dynamic.json``.

Fidelity: labels, predictor, loss, decoupled / joint modes and the cool-down as in the author code; the predictor
fit and warm-up are additions for short CPU budgets (``train.fit_images: 0`` and ``train.warmup_steps: 0`` turn them
off).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, List

from ..dynamic.model import DynamicConfig
from ..dynamic.train import DynamicTrainConfig
from .base import Recipe, RecipeConfig, Stage, StageContext, StageOutput, _threads
from .stage_folder import StageFolder
from .task import make_task, need


@dataclass
class FTWTEvalConfig:
    """Measurement settings. Attributes: latency_images: test images timed one at a time (0 = no latency)."""

    latency_images: int = 50

    def __post_init__(self):
        need(self.latency_images >= 0, "eval", f"latency_images must be >= 0, got {self.latency_images}")


@dataclass
class FTWTConfig(RecipeConfig):
    """The ftwt recipe: task, mask settings (``masks``), training (``train``), measurement (``eval``)."""

    VERSION: ClassVar[int] = 1

    out_dir: str = "runs/ftwt"
    masks: DynamicConfig = field(default_factory=DynamicConfig)
    train: DynamicTrainConfig = field(default_factory=DynamicTrainConfig)
    eval: FTWTEvalConfig = field(default_factory=FTWTEvalConfig)


class FTWTRecipe(Recipe):
    """Paper 9 (FTWT): per-input channel masks from self-supervised predictors. Config: `FTWTConfig`.

    Two resumable stages in ``<out_dir>/1_train`` and ``<out_dir>/2_measure``: ``train`` (sections ``masks``,
    ``train``) attaches the predictors, trains and saves the dynamic model (``model/``: safetensors + JSON, no
    pickle); ``measure`` (section ``eval``) reloads it and measures it.
    """

    name = "ftwt"
    Config = FTWTConfig
    fidelity = ("as in the author code (labels, predictor, loss, cool-down); predictor fit on cached features and "
                "warm-up added")

    def stages(self) -> List[Stage]:
        return [Stage("train", ("masks", "train"), self._train), Stage("measure", ("eval",), self._measure)]

    def _train(self, ctx: StageContext) -> StageOutput:
        from ..dynamic import attach
        from ..dynamic.io import save_dynamic
        from ..dynamic.train import train_dynamic

        task = ctx.task
        dyn = attach(task.build(), task.example_inputs(1), self.config.masks, task.input_shape)
        info = train_dynamic(dyn, task.train_set, self.config.train)
        save_dynamic(dyn, ctx.folder / "model", task.model_spec())
        return StageOutput(None, info={**info, "masked_sites": [s.conv for s in dyn.sites], "dense_groups": dyn.dense})

    def _measure(self, ctx: StageContext) -> StageOutput:
        from ..dynamic.evaluate import batch1_latency, evaluate_dynamic
        from ..dynamic.gathered import build_gathered, fold_batchnorm
        from ..dynamic.io import load_dynamic

        task, cfg = ctx.task, self.config.eval
        dyn = load_dynamic(ctx.folders["train"] / "model", task.architecture())
        figures = evaluate_dynamic(dyn, task.test_set, task.cfg.eval_batch_size, task.cfg.test_limit)
        info: Dict[str, Any] = {**figures.summary(), "agreement_per_site": figures.agreement,
                                "kept_per_site": figures.kept, "dense_macs": figures.dense_macs}
        if cfg.latency_images:
            images = [task.test_set[i][0] for i in range(min(cfg.latency_images, len(task.test_set)))]
            gathered = build_gathered(dyn, images[0][None])
            folded = fold_batchnorm(dyn.backbone, images[0][None])  # the fair baseline: BN folded as in gathered
            with _threads(task.cfg.latency_threads):
                latency = batch1_latency({"dense": dyn.backbone, "dense_folded": folded, "gathered": gathered},
                                         images)
            info.update(dense_ms=latency["dense"], dense_folded_ms=latency["dense_folded"],
                        gathered_ms=latency["gathered"], speedup=latency["dense_folded"] / latency["gathered"],
                        speedup_unfolded=latency["dense"] / latency["gathered"])
        return StageOutput(None, info=info)

    def run(self) -> Dict[str, Any]:
        """Run (or resume) both stages; returns the result also written to ``<out_dir>/result.json``."""
        cfg = self.config
        out, started = self._start()
        with _threads(cfg.task.num_threads):
            task = make_task(cfg.task, cfg.seed)
            result = self._result_head(out, "running", original=self._original(task, out), stages={})
            stages = self.stages()
            folders: Dict[str, Path] = {}
            for i, stage in enumerate(stages):
                folder = out / f"{i + 1}_{stage.name}"
                marker = StageFolder(folder, stage.name, self.fingerprint_settings(i), self.name, cfg.overwrite)
                info = marker.finished()
                if info is None:
                    marker.claim([out / f"{j + 1}_{s.name}" for j, s in enumerate(stages) if j > i])
                    t0 = time.perf_counter()
                    info = {**stage.run(StageContext(self, task, folder, dict(folders))).info,
                            "seconds": round(time.perf_counter() - t0, 2)}
                    (folder / "model").mkdir(parents=True, exist_ok=True)  # the marker expects a model folder
                    marker.mark_done(json.loads(json.dumps(info, default=float)))
                folders[stage.name] = folder
                result["stages"][stage.name] = info
        measured, base = result["stages"]["measure"], result["original"]
        extra = sum(p.numel() for p in _predictor_params(folders["train"] / "model"))
        result.update(status="complete", metric=task.metric, accuracy=measured["accuracy"],
                      params=base["params"] + extra, params_keep=(base["params"] + extra) / base["params"],
                      macs=measured["macs_mean"], macs_keep=measured["macs_frac_mean"],
                      latency_ms=measured.get("gathered_ms", float("nan")),
                      model_dir=str(folders["train"] / "model"))
        return self._write(out, result, started)


def _predictor_params(folder: Path) -> List[Any]:
    from ..io import load_tensors

    return [v for k, v in load_tensors(folder / "model.safetensors").items() if k.startswith("predictors.")]
