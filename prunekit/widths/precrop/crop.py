"""PreCropping end to end: layer densities at initialisation -> channel multipliers -> a `WidthConfig`.

    result = precrop(model, x, PreCropConfig(density="synexp", keep_params=0.5), batch=(images, labels))
    small = prunekit.widths.build_model(result.config, model, x, seed=0)     # train it from scratch

Which paper version each path follows: ``snip`` / ``grasp`` / ``synflow`` densities then PreCrop are the v1 paper
(arXiv 2203.02549v1); ``synexp`` (the closed-form program) and ``reconfigure`` (PreConfig, multipliers above 1 under
the same budget) are the revised version. Both convert densities to channels the same way (`channels`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from torch import nn

from ...errors import ConfigError
from ..config import WidthConfig
from .channels import multipliers_from_densities, renormalise, uniform_multipliers
from .densities import DENSITIES, DensityRequest, DensityResult
from .layers import Layer, total, variable_groups, weighted_layers


@dataclass
class PreCropConfig:
    """PreCrop settings (the ``crop`` section of the ``precrop`` recipe).

    Attributes:
        density: a registered density source (``prunekit ls densities``: snip, grasp, synflow, synexp) or
            ``uniform`` (one multiplier for every group: the uniform-width baseline).
        keep_params: fraction of the conv/linear weights kept (PAI sources need it; with ``reconfigure`` it may
            be 1.0: the same budget, redistributed).
        keep_macs: fraction of their MACs kept (``synexp`` and the final re-normalisation), or null.
        reconfigure: allow multipliers above 1 (widening) up to `max_scale` (PreConfig, paper v2).
        max_scale: the widest multiplier in the reconfigure mode.
        round_to: channel counts are multiples of this (1, or 8 for hardware-friendly widths).
        batch_size: images of the one batch SNIP / GraSP score with.
        synflow_iterations: SynFlow's pruning rounds (100 in the paper).
    """

    SECTION = "crop"

    density: str = "synexp"
    keep_params: Optional[float] = 0.5
    keep_macs: Optional[float] = None
    reconfigure: bool = False
    max_scale: float = 2.0
    round_to: int = 1
    batch_size: int = 64
    synflow_iterations: int = 100

    def __post_init__(self):
        s = self.SECTION
        if self.density != "uniform" and self.density not in DENSITIES:
            raise ConfigError(f"{s}: density must be 'uniform' or one of {DENSITIES.names()}, got {self.density!r}")
        if self.keep_params is None and self.keep_macs is None:
            raise ConfigError(f"{s}: set keep_params and/or keep_macs")
        top = self.max_scale if self.reconfigure else 1.0
        for key in ("keep_params", "keep_macs"):
            v = getattr(self, key)
            if v is not None and not (0.0 < v < 1.0 or (self.reconfigure and 0.0 < v <= top)):
                raise ConfigError(f"{s}: {key} must lie in (0, 1) (up to max_scale with reconfigure), got {v}")
        if not self.max_scale >= 1.0:
            raise ConfigError(f"{s}: max_scale must be >= 1, got {self.max_scale}")
        if self.round_to < 1 or self.batch_size < 1 or self.synflow_iterations < 1:
            raise ConfigError(f"{s}: round_to, batch_size and synflow_iterations must be >= 1")
        if self.density in ("snip", "grasp", "synflow") and self.keep_params is None:
            raise ConfigError(f"{s}: density '{self.density}' keeps a fraction of the weights: set keep_params")
        if self.density in ("snip", "grasp", "synflow") and self.keep_params is not None and self.keep_params >= 1:
            raise ConfigError(f"{s}: density '{self.density}' needs keep_params < 1")

    @property
    def scale_limit(self) -> float:
        return self.max_scale if self.reconfigure else 1.0


@dataclass
class PreCropResult:
    """What `precrop` found.

    Attributes:
        config: the `WidthConfig` (round to whole units).
        densities: layer name -> p_l from the source (the uniform baseline: the densities its widths imply).
        alpha: group id -> continuous multiplier after re-normalisation.
        masks: the source's unstructured keep-masks (PAI sources), layer name -> bool tensor.
        layers: the weighted layers.
        facts: realised weights / MACs fractions of the rounded config, and their error to the budget.
    """

    config: WidthConfig
    densities: Dict[str, float]
    alpha: Dict[str, float]
    masks: Optional[Dict[str, Any]]
    layers: List[Layer]
    facts: Dict[str, Any] = field(default_factory=dict)


def precrop(model: nn.Module, inputs: Any, config: PreCropConfig, batch: Optional[Tuple[Any, Any]] = None,
            analysis: Any = None, model_spec: Optional[Dict[str, Any]] = None) -> PreCropResult:
    """Densities at initialisation -> multipliers -> a `WidthConfig` for `model` (not modified).

    Args:
        model: the randomly initialised network (the claim is about initialisation: do not feed a trained one).
        inputs: example inputs for tracing (shape ``[B, *input_shape]``).
        config: `PreCropConfig`.
        batch: ``(images, labels)`` for SNIP / GraSP.
        analysis: `prunekit.analyze(model, inputs)` to reuse.
        model_spec: how to rebuild `model` (defaults to its registry tag).
    """
    from ...graph import analyze

    analysis = analysis or analyze(model, inputs)
    layers = weighted_layers(model, analysis, inputs)
    sizes = {g.id: g.size for g in analysis.groups}
    if not variable_groups(layers):
        raise ConfigError(f"precrop: no prunable channel group touches a conv/linear layer of "
                          f"{type(model).__name__}")
    limit = config.scale_limit
    result: Optional[DensityResult] = None
    if config.density == "uniform":
        alpha = uniform_multipliers(layers, sizes, config.keep_params, config.keep_macs)
        densities = {layer.name: layer.scale(alpha) for layer in layers}
    else:
        upper = {layer.name: limit ** sum(layer.groups.values()) for layer in layers}
        shape = tuple(inputs.shape[1:]) if hasattr(inputs, "shape") else None
        request = DensityRequest(keep_params=config.keep_params, keep_macs=config.keep_macs, batch=batch,
                                 input_shape=shape, upper=upper,
                                 options={"iterations": config.synflow_iterations})
        result = DENSITIES.get(config.density)(model, layers, request)
        densities = result.densities
        alpha = multipliers_from_densities(layers, densities, sizes, limit)
        alpha = renormalise(layers, alpha, sizes, config.keep_params, config.keep_macs, limit)
    fractions = {g: a for g, a in alpha.items()}
    width = WidthConfig.from_fractions(
        analysis, fractions, round_to=config.round_to, model=model, inputs=inputs, rounding="nearest",
        max_scale=limit, model_spec=model_spec, method="precrop", density=config.density,
        budget={"keep_params": config.keep_params, "keep_macs": config.keep_macs},
        reconfigure=config.reconfigure,
        paper_version="v2 (SynExp/PreConfig)" if config.density == "synexp" or config.reconfigure else "v1")
    realised = width.fractions()
    facts = {"params_fraction": total(layers, realised, "params") / total(layers, None, "params"),
             "macs_fraction": total(layers, realised, "macs") / total(layers, None, "macs"),
             "widened_groups": sorted(width.widened())}
    for key in ("params", "macs"):
        goal = getattr(config, f"keep_{key}")
        if goal is not None:
            facts[f"{key}_match_error"] = facts[f"{key}_fraction"] / goal - 1.0
    return PreCropResult(width, densities, alpha, result.masks if result else None, layers, facts)
