"""Measuring a `DynamicChannelModel`: accuracy, per-input MACs, predictor agreement, batch-1 latency."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .model import DynamicChannelModel


@dataclass
class DynamicEval:
    """Figures of one evaluation.

    Attributes:
        accuracy: top-1 of the masked model.
        macs: ``[N]`` backbone MACs each input needed.
        dense_macs: MACs of the unmasked backbone. predictor_macs: MACs of the predictors (per input).
        agreement: site -> fraction of (input, filter) pairs where the predicted mask equals the label.
        kept: site -> mean fraction of filters kept.
    """

    accuracy: float
    macs: torch.Tensor
    dense_macs: int
    predictor_macs: int
    agreement: Dict[str, float] = field(default_factory=dict)
    kept: Dict[str, float] = field(default_factory=dict)

    def summary(self) -> Dict[str, float]:
        """Accuracy, mean / std / p5 / p95 of the MACs fraction, mean agreement and kept fraction."""
        frac = self.macs / self.dense_macs
        return {"accuracy": self.accuracy, "macs_mean": float(self.macs.mean()), "macs_frac_mean": float(frac.mean()),
                "macs_frac_std": float(frac.std()) if len(frac) > 1 else 0.0,
                "macs_frac_p5": float(frac.quantile(0.05)), "macs_frac_p95": float(frac.quantile(0.95)),
                "predictor_macs_frac": self.predictor_macs / self.dense_macs,
                "agreement": statistics.fmean(self.agreement.values()) if self.agreement else float("nan"),
                "kept_frac": statistics.fmean(self.kept.values()) if self.kept else float("nan")}


@torch.no_grad()
def evaluate_dynamic(dyn: DynamicChannelModel, dataset: Dataset, batch_size: int = 256,
                     limit: Optional[int] = None, mask_source: str = "predicted") -> DynamicEval:
    """Run the masked model (eval mode) over the first `limit` items of `dataset`.

    Args:
        mask_source: ``predicted`` (the deployed model) or ``labels`` (the ground-truth masks: an oracle).
    """
    n = len(dataset) if limit is None else min(limit, len(dataset))
    subset = dataset if n == len(dataset) else torch.utils.data.Subset(dataset, range(n))
    was_training, source = dyn.training, dyn.mask_source
    dyn.eval()
    dyn.mask_source = mask_source
    correct, macs = 0, []
    agree: Dict[str, float] = {}
    kept: Dict[str, float] = {}
    try:
        for images, target in DataLoader(subset, batch_size=batch_size, shuffle=False):
            logits = dyn(images)
            correct += int((logits.argmax(1) == target).sum())
            used = dyn.last_masks if mask_source == "predicted" else dyn.last_labels
            macs.append(dyn.macs_per_input(used))
            for site, mask in dyn.last_masks.items():
                agree[site] = agree.get(site, 0.0) + float((mask == dyn.last_labels[site]).float().mean(1).sum())
                kept[site] = kept.get(site, 0.0) + float(mask.mean(1).sum())
    finally:
        dyn.train(was_training)
        dyn.mask_source = source
    return DynamicEval(correct / n, torch.cat(macs), dyn.dense_macs(), dyn.predictor_macs(),
                       {k: v / n for k, v in agree.items()}, {k: v / n for k, v in kept.items()})


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


@torch.inference_mode()
def batch1_latency(models: Dict[str, nn.Module], images: List[torch.Tensor], warmup: int = 3,
                   repeats: int = 1, clock: str = "wall") -> Dict[str, float]:
    """Median per-input latency in ms of each model on `images` (each ``[C, H, W]``), one at a time, interleaved
    so the models share the machine's load alike.

    Args:
        clock: ``wall`` (elapsed time) or ``cpu`` (the calling thread's CPU time: with one torch thread every op
            runs on it, and time the scheduler gives other processes is not counted, so a shared, overloaded
            machine does not inflate small ops at random).

    Returns:
        ``{name: median ms}``.
    """
    if clock not in CLOCKS:
        raise ValueError(f"dynamic: batch1_latency clock must be one of {sorted(CLOCKS)}, got {clock!r}")
    now = CLOCKS[clock]
    for model in models.values():
        model.eval()
        for x in images[:warmup]:
            model(x[None])
    times: Dict[str, List[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for x in images:
            for name, model in models.items():
                start = now()
                model(x[None])
                times[name].append((now() - start) * 1000.0)
    return {name: statistics.median(v) for name, v in times.items()}
