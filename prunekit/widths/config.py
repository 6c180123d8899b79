"""`WidthConfig`: the kept width of every channel group, as a first-class, serialisable object.

PreCropping and TAS both answer "how wide should each group be" and hand the answer to the engine, which builds a
freshly initialised network of that shape (residual ties, depthwise convolutions and the classifier are handled by
the engine's groups and layer rules, once, generally)::

    from prunekit.models import build
    from prunekit.widths import WidthConfig, build_model, save_width_model

    model = build("cifar_resnet20_b", pretrained=False)
    x = torch.randn(2, 3, 32, 32)
    analysis = prunekit.analyze(model, x)
    config = WidthConfig.from_fractions(analysis, {"layer1.0.conv1": 0.5, "layer3.0.conv1": 0.25}, model=model,
                                        inputs=x)
    small = build_model(config, model, x, seed=0)     # a fresh, narrower network (Kaiming init of the new shape)
    config.save("widths.yaml"); WidthConfig.load("widths.yaml") == config    # JSON / YAML round trip
    save_width_model(small, "out/")                   # plan format: prunekit.load("out/") rebuilds it

A group id is the engine's (`ChannelGroup.id`, e.g. ``"layer1.0.conv1"``); `kept` holds units (channels, heads),
not fractions. Groups absent from `kept` keep their full width.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional

from torch import nn

from ..errors import ConfigError
from ..prune.plan import PruningPlan, describe_inputs, model_fingerprint

if TYPE_CHECKING:
    from ..graph import Analysis

#: provenance["kind"] of plans (and checkpoints) made from a width configuration
WIDTH_CONFIG_KIND = "width_config"
_FIELDS = ("kept", "group_sizes", "model_spec", "provenance", "model_fingerprint", "inputs", "max_scale")


@dataclass
class WidthConfig:
    """How many units of every channel group a network keeps.

    Attributes:
        kept: engine group id -> kept units, ``0 < kept <= ceil(size * max_scale)``.
        group_sizes: engine group id -> units of the ORIGINAL model's group (every group of the analysis).
        model_spec: how to rebuild the original model (``{"registry": name, "kwargs": {...}}``), as in plans.
        provenance: where the widths came from (method, density source, budget, seed...).
        model_fingerprint: `prune.plan.model_fingerprint` of the original model ("" when unknown).
        inputs: `prune.plan.describe_inputs` of the example inputs the groups were traced with (None when unknown).
        max_scale: how much wider than the original a group may be; 1.0 (default) forbids widening. Widened configs
            (PreCrop's "reconfigure" mode) are built by `build_model` but cannot become a `PruningPlan`.
    """

    kept: Dict[str, int]
    group_sizes: Dict[str, int]
    model_spec: Dict[str, Any] = field(default_factory=dict)
    provenance: Dict[str, Any] = field(default_factory=dict)
    model_fingerprint: str = ""
    inputs: Any = None
    max_scale: float = 1.0

    def __post_init__(self):
        if not isinstance(self.kept, Mapping) or not isinstance(self.group_sizes, Mapping):
            raise ConfigError("WidthConfig: 'kept' and 'group_sizes' must map group ids to integers")
        self.kept = {str(k): _as_int(v, f"kept['{k}']") for k, v in self.kept.items()}
        self.group_sizes = {str(k): _as_int(v, f"group_sizes['{k}']") for k, v in self.group_sizes.items()}
        self.model_spec, self.provenance = dict(self.model_spec or {}), dict(self.provenance or {})
        if not (isinstance(self.max_scale, (int, float)) and self.max_scale >= 1.0):
            raise ConfigError(f"WidthConfig.max_scale must be a number >= 1, got {self.max_scale!r}")
        for gid, size in self.group_sizes.items():
            if size <= 0:
                raise ConfigError(f"WidthConfig.group_sizes['{gid}'] must be positive, got {size}")
        for gid, k in self.kept.items():
            if gid not in self.group_sizes:
                raise ConfigError(f"WidthConfig.kept names group '{gid}', which is not in group_sizes (known: "
                                  f"{sorted(self.group_sizes)[:8]}...)")
            limit = math.ceil(self.group_sizes[gid] * self.max_scale - 1e-9)
            if not 0 < k <= limit:
                raise ConfigError(f"WidthConfig.kept['{gid}'] = {k} must lie in (0, {limit}] (group size "
                                  f"{self.group_sizes[gid]}, max_scale {self.max_scale})")

    # -- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_plan(cls, plan: PruningPlan) -> "WidthConfig":
        """The widths a `PruningPlan` leaves: ``kept = size - len(removed)`` per group."""
        kept = {gid: size - len(set(plan.removed.get(gid, []))) for gid, size in plan.group_sizes.items()}
        return cls(kept=kept, group_sizes=dict(plan.group_sizes), model_spec=dict(plan.model_spec or {}),
                   provenance={"source": "plan", "plan_provenance": dict(plan.provenance or {})},
                   model_fingerprint=plan.model_fingerprint, inputs=plan.inputs)

    @classmethod
    def full(cls, analysis: "Analysis", model: Optional[nn.Module] = None, inputs: Any = None,
             **provenance: Any) -> "WidthConfig":
        """Every group at its full width (the unpruned network)."""
        return cls.from_fractions(analysis, {}, model=model, inputs=inputs, **provenance)

    @classmethod
    def from_fractions(cls, analysis: "Analysis", fractions: Mapping[str, float], round_to: int = 1,
                       min_keep: int = 1, model: Optional[nn.Module] = None, inputs: Any = None,
                       rounding: str = "nearest", max_scale: float = 1.0, model_spec: Optional[Dict] = None,
                       **provenance: Any) -> "WidthConfig":
        """Kept units from width fractions (kept / size) per group; groups not named keep their full width.

        Args:
            analysis: `prunekit.analyze(model, inputs)` of the original model.
            fractions: group id -> fraction in (0, max_scale]; refused (unless 1) for groups the engine cannot prune.
            round_to: kept units are a multiple of this (and of the group's own ``round_to``), capped at the size.
            min_keep: at least this many units (and the group's own ``min_keep``).
            model / inputs: the original model and example inputs, recorded so `to_plan` needs nothing else.
            rounding: ``"nearest"`` or ``"ceil"`` (PreCrop's ``ceil(alpha * C)``).
            max_scale: see the class; fractions above 1 need ``max_scale >= fraction``.
            model_spec: how to rebuild the model; defaults to the registry tag of `model`.
            **provenance: recorded as is.
        """
        if rounding not in ("nearest", "ceil"):
            raise ConfigError(f"WidthConfig.from_fractions: rounding must be 'nearest' or 'ceil', got {rounding!r}")
        if round_to < 1 or min_keep < 1:
            raise ConfigError("WidthConfig.from_fractions: round_to and min_keep must be >= 1")
        groups = {g.id: g for g in analysis.groups}
        kept: Dict[str, int] = {}
        for gid, frac in fractions.items():
            if gid not in groups:
                raise ConfigError(f"WidthConfig.from_fractions: unknown group '{gid}' (known: "
                                  f"{sorted(groups)[:8]}...)")
            g = groups[gid]
            frac = float(frac)
            if not 0.0 < frac <= max_scale + 1e-9:
                raise ConfigError(f"WidthConfig.from_fractions: fraction of group '{gid}' must lie in (0, "
                                  f"{max_scale}], got {frac}")
            if frac != 1.0 and not g.prunable:
                raise ConfigError(f"WidthConfig.from_fractions: group '{gid}' cannot be resized: "
                                  f"{'; '.join(g.reasons)}")
            step = max(int(round_to), int(g.round_to))
            units = frac * g.size / step
            units = math.ceil(units - 1e-9) if rounding == "ceil" else math.floor(units + 0.5)
            limit = math.ceil(g.size * max_scale - 1e-9)
            kept[gid] = int(min(max(units * step, min_keep, g.min_keep, 1), limit))
        for gid, g in groups.items():
            kept.setdefault(gid, g.size)
        spec = model_spec if model_spec is not None else _registry_spec(model)
        return cls(kept=kept, group_sizes={g.id: g.size for g in analysis.groups}, model_spec=spec,
                   provenance={"source": "fractions", **provenance},
                   model_fingerprint=model_fingerprint(model) if model is not None else "",
                   inputs=describe_inputs(inputs) if inputs is not None else None, max_scale=max_scale)

    # -- views --------------------------------------------------------------------------------------------------
    def fractions(self) -> Dict[str, float]:
        """group id -> kept / size (groups absent from `kept` are 1.0)."""
        return {gid: self.kept.get(gid, size) / size for gid, size in self.group_sizes.items()}

    def widened(self) -> Dict[str, int]:
        """group id -> units added beyond the original width (only widened groups)."""
        return {gid: k - self.group_sizes[gid] for gid, k in self.kept.items() if k > self.group_sizes[gid]}

    def removed_counts(self) -> Dict[str, int]:
        """group id -> units removed (only narrowed groups)."""
        return {gid: self.group_sizes[gid] - k for gid, k in self.kept.items() if k < self.group_sizes[gid]}

    # -- to the engine ------------------------------------------------------------------------------------------
    def to_plan(self, analysis: "Analysis", model: Optional[nn.Module] = None) -> PruningPlan:
        """The `PruningPlan` that narrows the original model to these widths.

        Which units go does not matter for a freshly initialised network, so the plan removes the LAST
        ``size - kept`` units of each group: the kept units are the first ones, as TAS slices "the first c filters"
        and as a later narrower re-build of the same config would keep them (deterministic, no scores needed).

        Args:
            analysis: `prunekit.analyze` of the original model (group ids and sizes must match).
            model: the original model (for its fingerprint) when this config does not record one.

        Raises:
            ConfigError: a widened group (plans only remove), unknown or resized groups, or an unprunable group
                that would be narrowed.
        """
        if self.widened():
            raise ConfigError(f"WidthConfig.to_plan: groups {sorted(self.widened())[:6]} are wider than the "
                              f"original; a pruning plan can only remove units (use build_model, which widens)")
        fingerprint = model_fingerprint(model) if model is not None else self.model_fingerprint
        if not fingerprint:
            raise ConfigError("WidthConfig.to_plan: the config records no model fingerprint; pass model=")
        groups = self._check_analysis(analysis)
        removed = {}
        for gid, n in self.removed_counts().items():
            g = groups[gid]
            if not g.prunable:
                raise ConfigError(f"WidthConfig.to_plan: group '{gid}' cannot be narrowed: {'; '.join(g.reasons)}")
            removed[gid] = list(range(g.size - n, g.size))
        provenance = PruningPlan.provenance_now(kind=WIDTH_CONFIG_KIND, from_scratch=True,
                                                width_config=self.to_dict(), **{
                                                    k: v for k, v in self.provenance.items()
                                                    if k in ("method", "source", "density", "budget")})
        return PruningPlan(model_fingerprint=fingerprint, removed=removed,
                           group_sizes={g.id: g.size for g in analysis.groups}, inputs=self.inputs,
                           model_spec=dict(self.model_spec), provenance=provenance)

    def _check_analysis(self, analysis: "Analysis") -> Dict[str, Any]:
        groups = {g.id: g for g in analysis.groups}
        for gid, size in self.group_sizes.items():
            if gid not in groups:
                raise ConfigError(f"WidthConfig: group '{gid}' is not in this model (made for another model?)")
            if groups[gid].size != size:
                raise ConfigError(f"WidthConfig: group '{gid}' has {groups[gid].size} units in this model, the "
                                  f"config expects {size}")
        return groups

    # -- serialisation ------------------------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "WidthConfig":
        if not isinstance(data, Mapping):
            raise ConfigError("WidthConfig: expected a mapping")
        unknown = sorted(set(data) - set(_FIELDS))
        if unknown:
            raise ConfigError(f"WidthConfig: unknown keys {unknown}; known: {list(_FIELDS)}")
        missing = sorted({"kept", "group_sizes"} - set(data))
        if missing:
            raise ConfigError(f"WidthConfig: missing keys {missing}")
        return cls(**dict(data))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "WidthConfig":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"WidthConfig: malformed JSON: {exc}") from None

    def save(self, path: str | Path) -> Path:
        """Write YAML (``.yaml`` / ``.yml``) or JSON (anything else), atomically."""
        from ..io import atomic_write_text

        path = Path(path)
        if path.suffix in (".yaml", ".yml"):
            import yaml

            return atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))
        return atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "WidthConfig":
        """Read a config written by `save` (YAML or JSON by suffix), or a checkpoint's ``plan.json`` made from one."""
        path = Path(path)
        if path.is_dir():
            path = path / "plan.json"
        if not path.exists():
            raise ConfigError(f"width config not found: {path}")
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ConfigError(f"{path}: malformed YAML: {exc}") from None
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}: malformed JSON: {exc}") from None
        if isinstance(data, dict) and "removed" in data and "model_fingerprint" in data:  # a plan / checkpoint
            embedded = (data.get("provenance") or {}).get("width_config")
            return cls.from_dict(embedded) if embedded else cls.from_plan(PruningPlan.from_json(text))
        return cls.from_dict(data)


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ConfigError(f"WidthConfig.{what} must be an integer, got {value!r}")
    return int(value)


def _registry_spec(model: Optional[nn.Module]) -> Dict[str, Any]:
    tag = getattr(model, "prunekit_model_spec", None) if model is not None else None
    if isinstance(tag, dict) and tag.get("fingerprint") == model_fingerprint(model):
        return {k: v for k, v in tag.items() if k != "fingerprint"}
    return {}
