"""What the PDP and gradual-magnitude sparsifiers share: targets, per-layer targets, the schedule clock, hardening.

Both are training-loop hooks (`prunekit.train.loop.TrainHook`): they register a parametrization on every target
weight in ``on_train_start``, advance their schedule in ``after_backward`` (so the next forward sees the next step's
target), and save their clock in checkpoints. After training, ``harden(model)`` returns the hard `MaskSet` and
leaves the model either with frozen masks (to fine-tune) or with the masked-out weights zeroed.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional

import torch
from torch import nn
from torch.nn.utils import parametrize

from ...errors import ConfigError
from .artifact import MaskEntry, MaskSet, remove_masks
from .masks import global_layer_ratios, hard_keep, prune_count
from .targets import Target, find_targets, from_groups, get_module, nm_compatible, originals, to_groups

log = logging.getLogger(__name__)


class ElementSparsifier:
    """Base of the unstructured and N:M sparsifiers (subclasses set `method` and `make_param`, and advance the
    schedule in `set_step`).

    Args:
        config: a `SparsityConfig` (``pattern`` unstructured or N:M).
    """

    method = "base"

    def __init__(self, config):
        if config.kind == "channel":
            raise ConfigError(f"{type(self).__name__}: the channel pattern is handled by prunekit.train.pdp.channel "
                              f"(make_sparsifier picks it)")
        self.config = config
        self.targets: List[Target] = []
        self.skipped: Dict[str, str] = {}
        self.ratios: Optional[List[float]] = None
        self.step = 0
        self.warmup_steps = self.ramp_steps = 0
        self.model: Optional[nn.Module] = None

    # ---------------------------------------------------------------------------------------------- set-up
    def prepare(self, model: nn.Module, steps_per_epoch: int) -> None:
        """Resolve targets and register the parametrizations (what ``on_train_start`` does, usable without the
        loop)."""
        cfg = self.config
        self.model = model
        self.warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))
        self.ramp_steps = int(round(cfg.ramp_epochs * steps_per_epoch))
        self.targets, self.skipped = [], {}
        for t in find_targets(model, cfg.include, cfg.exclude):
            if cfg.kind == "nm" and not nm_compatible(t, cfg.m):
                self.skipped[t.name] = f"input dim {t.shape[t.in_dim]} is not a multiple of {cfg.m}"
                continue
            self.targets.append(t)
        if self.skipped:
            log.info("%s: %d layers left dense: %s", self.method, len(self.skipped), self.skipped)
        for t in self.targets:
            parametrize.register_parametrization(get_module(model, t.module), t.param, self.make_param(t))
        self.set_step(model, self.step)

    def on_train_start(self, model: nn.Module, info) -> None:
        self.prepare(model, info.steps_per_epoch)

    def after_backward(self, model: nn.Module, step: int, epoch: int) -> None:
        self.record(model, step)
        self.set_step(model, step + 1)

    def record(self, model: nn.Module, step: int) -> None:
        """Hook for per-step statistics (PDP tracks its masks here)."""

    def params(self, model: nn.Module) -> Dict[str, nn.Module]:
        """Target name -> its parametrization module."""
        return {t.name: get_module(model, t.module).parametrizations[t.param][0] for t in self.targets}

    def layer_ratios(self, model: nn.Module) -> List[float]:
        """Per-layer final sparsities (unstructured): from one global magnitude sort, or uniform; computed once."""
        if self.ratios is None:
            cfg = self.config
            if cfg.kind == "nm":
                self.ratios = [1.0 - cfg.n / cfg.m] * len(self.targets)
            elif cfg.allocation == "uniform":
                self.ratios = [cfg.sparsity] * len(self.targets)
            else:
                weights = originals(model, self.targets)
                self.ratios = global_layer_ratios([weights[t.name].abs() for t in self.targets], cfg.sparsity)
        return self.ratios

    # ---------------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> Dict[str, torch.Tensor]:
        out = {"step": torch.tensor(self.step)}
        if self.ratios is not None:
            out["ratios"] = torch.tensor(self.ratios, dtype=torch.float64)
        return out

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        if "ratios" in state:
            self.ratios = [float(v) for v in state["ratios"]]
        if "step" in state and self.model is not None:
            self.set_step(self.model, int(state["step"]))

    # ---------------------------------------------------------------------------------------------- hardening
    def final_keep(self, w: torch.Tensor, t: Target, ratio: float) -> torch.Tensor:
        """The hard keep-mask of one weight at the final target: the largest magnitudes (per N:M group, or over the
        layer), so the count is exact: ``round(ratio * numel)`` pruned, or N of every M kept."""
        cfg = self.config
        if cfg.kind == "nm":
            rows = to_groups(w.abs(), t.in_dim, cfg.m)
            return from_groups(hard_keep(rows, cfg.m - cfg.n), t.shape, t.in_dim)
        return hard_keep(w.abs().reshape(1, -1), prune_count(w.numel(), ratio)).reshape(t.shape)

    def effective_weights(self, model: nn.Module) -> Dict[str, torch.Tensor]:
        """The weights the hard mask is chosen from (PDP: the raw weights; GMP: the currently masked ones)."""
        return {k: v.detach() for k, v in originals(model, self.targets).items()}

    def harden(self, model: nn.Module, freeze: bool = True) -> MaskSet:
        """Turn the training masks into hard ones at the final target.

        Args:
            model: the model trained with this sparsifier (its parametrizations are replaced).
            freeze: True: leave a `FrozenMask` on every target (fine-tune next); False: zero the masked-out weights
                and remove every mask.

        Returns:
            the `MaskSet` (what `MaskSet.save` stores beside the weights).
        """
        cfg = self.config
        ratios = self.layer_ratios(model)
        weights = self.effective_weights(model)
        entries, masks = {}, {}
        for t, r in zip(self.targets, ratios):
            keep = self.final_keep(weights[t.name], t, r)
            entries[t.name] = MaskEntry(t.module, t.param, t.shape, "nm" if cfg.kind == "nm" else "unstructured",
                                        cfg.n, cfg.m, t.in_dim)
            masks[t.name] = keep
        for t in self.targets:
            parametrize.remove_parametrizations(get_module(model, t.module), t.param, leave_parametrized=False)
        maskset = MaskSet(entries, masks, {"method": self.method, "pattern": cfg.pattern,
                                           "target_sparsity": cfg.final_sparsity, "skipped": self.skipped})
        maskset.apply(model)
        if freeze:
            maskset.freeze(model)
        return maskset


def finish(model: nn.Module) -> nn.Module:
    """Bake frozen masks into the weights (zeros stay zeros) and drop the parametrizations."""
    return remove_masks(model)
