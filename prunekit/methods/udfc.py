"""UDFC: unified data-free compression, pruning and quantization without fine-tuning (seed paper 12).

Bai, Chen, Shen, Qian, Liu, "Unified Data-Free Compression: Pruning and Quantization without Fine-Tuning", ICCV
2023. One stage, no data: `prunekit.compensate.udfc.compress` prunes (l1 by default) and quantises the weights
(per-channel symmetric, BN folded first), compensating both in closed form from the BatchNorm statistics, and the
recipe writes the low-bit artifact (`prunekit.quant.artifact`), reloads it and measures it on the task's test set.

Fidelity: UDFC-style reconstruction (the paper's equations were not available; see docs/udfc.md for the
derivation and where it may differ).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List

from ..compensate.udfc import UDFCConfig
from .base import Recipe, RecipeConfig, Stage
from .task import TaskConfig, make_task


@dataclass
class UDFCRecipeConfig(RecipeConfig):
    """The udfc recipe: the task (model + test data for the final measurement only) and the `compress` section."""

    VERSION: ClassVar[int] = 1

    out_dir: str = "runs/udfc"
    task: TaskConfig = field(default_factory=lambda: TaskConfig(model="cifar_resnet56", augment=None))
    compress: UDFCConfig = field(default_factory=lambda: UDFCConfig(keep=0.7, bits=6))


class UDFCRecipe(Recipe):
    """Paper 12 (UDFC): data-free pruning + quantization with closed-form compensation. Config: `UDFCRecipeConfig`."""

    name = "udfc"
    Config = UDFCRecipeConfig
    fidelity = "UDFC-style reconstruction (equations derived, not checked against the paper)"

    def stages(self) -> List[Stage]:
        return [Stage("compress", ("compress",), lambda ctx: None)]

    def run(self) -> Dict[str, Any]:
        """Compress (no data), save the artifact under ``out_dir/model``, reload it, measure; returns the result."""
        from ..compensate.udfc import compress
        from ..quant.artifact import load_quantized
        from .base import _threads

        cfg = self.config
        out, started = self._start()
        with _threads(cfg.task.num_threads):
            task = make_task(cfg.task, cfg.seed)
            model = task.build()
            original = task.measure(model) if cfg.task.eval_original else task.cost(model)
            result = compress(model, task.example_inputs(), cfg.compress)
            spec = task.model_spec()
            if result.plan is not None:
                result.plan.model_spec = dict(spec)
            model_dir = out / "model"
            result.save(model_dir, spec)
            if cfg.compress.bits is not None:
                final = load_quantized(model_dir).eval()
            else:
                import prunekit

                final = prunekit.load(model_dir).eval()
            metrics = task.measure(final)
        payload = self._result_head(out, "complete", original=original, metric=task.metric,
                                    model_dir=str(model_dir), **metrics,
                                    macs_keep=metrics["macs"] / original["macs"],
                                    params_keep=metrics["params"] / original["params"],
                                    stages={"compress": result.report})
        return self._write(out, payload, started)
