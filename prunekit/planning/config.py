"""`PlanConfig`: everything that decides what to remove, as one validated, serialisable value.

The same nested keys work in a YAML / JSON file, in Python and on the command line (``--set plan.<key>=...``):

    criterion:   {name: taylor, normalizer: mean}          # name + the criterion's own options
    allocator:   {name: scoped, by: [scale], ratios: {"8": 1.5}, relative: true}
    budget:      {target: latency, keep_fraction: 0.5, runtime: onnxruntime}   # or {ratio: 0.3}
    constraints: {round_to: auto, max_ratio: 0.9, min_keep_channels: 4}
    tolerance: 0.02             # relative tolerance of the budget search
    allow_inexact: false        # also prune groups whose removal is valid but not equal to masking
    ignore: ["fc", "head.*"]    # module-name globs left whole
    calibration: {data: cifar10, split: train, batches: 4, batch_size: 32}
    strict: false               # fail on the first operation the engine does not know

Unknown keys and values of the wrong type are refused with the dotted key named; a criterion's or allocator's
options are checked against that plugin's own config dataclass. `PlanConfig.to_dict()` is what `plan.json` records
under ``provenance.plan_config``.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Dict, Optional, Tuple, Union

from ..config import from_dict, read_config_file
from ..errors import ConfigError
from ..graph.types import Budget

if TYPE_CHECKING:
    from torch import nn

CONSTRAINT_KEYS = ("round_to", "max_ratio", "min_keep_channels")


def _plugin_options(registry_kind: str, name: str, options: Dict[str, Any], prefix: str) -> Dict[str, Any]:
    """`options` checked and typed against the config dataclass of the plugin `name` (keys named on error)."""
    from ..registry import registry

    if registry_kind == "criterion":
        import prunekit.importance  # noqa: F401 - fills the registry
    else:
        import prunekit.allocate  # noqa: F401
    try:
        plugin = registry(registry_kind).get(name)
    except Exception as exc:  # UnknownNameError lists the known names
        raise ConfigError(f"config key '{prefix}.name': {exc}") from None
    if registry_kind == "allocator":
        clash = sorted(set(options) & set(CONSTRAINT_KEYS))
        if clash:
            raise ConfigError(f"config key '{prefix}.{clash[0]}': constraints live in 'plan.constraints' "
                              f"(set constraints.{clash[0]} instead)")
    built = from_dict(plugin.Config, dict(options), prefix=prefix)
    return {k: _jsonable(getattr(built, k)) for k in options}


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


@dataclass
class PluginChoice:
    """A registered plugin by name plus its options (flattened beside ``name`` in files and ``--set``).

    Attributes:
        name: the registry name (``prunekit ls criteria`` / ``prunekit ls allocators``).
        options: keyword options of the plugin's config dataclass.
    """

    KIND: ClassVar[str] = ""
    DEFAULT: ClassVar[str] = ""

    name: str = ""
    options: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.name = self.name or self.DEFAULT
        self.options = _plugin_options(self.KIND, self.name, dict(self.options), self.SECTION)

    SECTION: ClassVar[str] = ""

    @classmethod
    def from_mapping(cls, data: Any, prefix: str) -> "PluginChoice":
        """Read ``{name: ..., <option>: ...}`` (or a bare name string); options nested under ``options`` also work."""
        if isinstance(data, str):
            data = {"name": data}
        if not isinstance(data, dict):
            raise ConfigError(f"config key '{prefix}': expected a name or a mapping, got {type(data).__name__}")
        data = dict(data)
        name = data.pop("name", cls.DEFAULT)
        if not isinstance(name, str):
            raise ConfigError(f"config key '{prefix}.name': expected str, got {type(name).__name__} {name!r}")
        options = data.pop("options", {}) or {}
        if not isinstance(options, dict):
            raise ConfigError(f"config key '{prefix}.options': expected a mapping")
        options.update(data)
        choice = cls.__new__(cls)
        choice.name = name
        choice.options = _plugin_options(cls.KIND, name, options, prefix)
        return choice

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, **self.options}


@dataclass
class CriterionChoice(PluginChoice):
    """The importance criterion (``plan.criterion``): ``{name: l1}``, ``{name: taylor, normalizer: mean}``."""

    KIND: ClassVar[str] = "criterion"
    DEFAULT: ClassVar[str] = "l1"
    SECTION: ClassVar[str] = "criterion"

    def requires(self) -> frozenset:
        """What the criterion needs from calibration (``activations`` / ``grads`` / ``fisher``)."""
        from ..importance import CRITERIA

        return frozenset(getattr(CRITERIA.get(self.name), "requires", frozenset()))


@dataclass
class AllocatorChoice(PluginChoice):
    """The allocation policy (``plan.allocator``): ``{name: uniform}``, ``{name: scoped, by: [scale]}``."""

    KIND: ClassVar[str] = "allocator"
    DEFAULT: ClassVar[str] = "uniform"
    SECTION: ClassVar[str] = "allocator"


@dataclass
class Constraints:
    """Limits every allocation respects (``plan.constraints``).

    Attributes:
        round_to: kept channel counts are multiples of this; ``"auto"``: the channel block of the hardware the
            model is on (16 on AVX-512 CPUs, 8 elsewhere). None: no rounding.
        max_ratio: at most this fraction of any group's units goes, in (0, 1].
        min_keep_channels: every group keeps at least this many units.
    """

    round_to: Union[int, str, None] = None  # None with a latency budget: "auto" (see PlanConfig.effective_round_to)
    max_ratio: Optional[float] = None
    min_keep_channels: Optional[int] = None

    def __post_init__(self):
        from ..allocate.hardware import resolve_round_to

        if self.round_to is not None and str(self.round_to).strip().lower() != "auto":
            self.round_to = resolve_round_to(self.round_to)  # raises ConfigError naming the value
        if self.max_ratio is not None and not 0.0 < self.max_ratio <= 1.0:
            raise ConfigError(f"constraints.max_ratio must lie in (0, 1], got {self.max_ratio}")
        if self.min_keep_channels is not None and self.min_keep_channels < 1:
            raise ConfigError(f"constraints.min_keep_channels must be >= 1, got {self.min_keep_channels}")


@dataclass
class CalibrationConfig:
    """Calibration data for criteria that need activations or gradients (``plan.calibration``).

    Attributes:
        data: a registered dataset name (``prunekit ls datasets``); None: no dataset (the Python API may pass
            batches directly to `prunekit.plan`).
        split: dataset split the batches come from.
        batches / batch_size: how much data (batches of batch_size items).
        seed: which items (a seeded random subset of the split).
    """

    data: Optional[str] = None
    split: str = "train"
    batches: int = 4
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self):
        if self.batches < 1 or self.batch_size < 1:
            raise ConfigError(f"calibration.batches and calibration.batch_size must be >= 1, got {self.batches}, "
                              f"{self.batch_size}")


@dataclass
class PlanConfig:
    """How a pruning plan is made (see the module docstring for the keys)."""

    VERSION: ClassVar[int] = 1

    criterion: CriterionChoice = field(default_factory=CriterionChoice)
    allocator: AllocatorChoice = field(default_factory=AllocatorChoice)
    budget: Budget = field(default_factory=Budget)
    constraints: Constraints = field(default_factory=Constraints)
    tolerance: float = 0.02
    allow_inexact: bool = False
    ignore: Tuple[str, ...] = ()
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    strict: bool = False

    def __post_init__(self):
        if isinstance(self.criterion, (str, dict)):
            self.criterion = CriterionChoice.from_mapping(self.criterion, "criterion")
        if isinstance(self.allocator, (str, dict)):
            self.allocator = AllocatorChoice.from_mapping(self.allocator, "allocator")
        if not 0.0 < self.tolerance < 0.5:
            raise ConfigError(f"tolerance (relative, of the budget search) must lie in (0, 0.5), got {self.tolerance}")
        self.ignore = tuple(self.ignore)

    # ------------------------------------------------------------------------------------------------ reading
    @classmethod
    def from_dict(cls, data: Dict[str, Any], prefix: str = "") -> "PlanConfig":
        """Build from the nested mapping (unknown keys / wrong types raise `ConfigError` naming the key)."""
        if not isinstance(data, dict):
            raise ConfigError(f"config key '{prefix or 'plan'}' is a section (PlanConfig), not a value: set its keys "
                              f"instead, e.g. {prefix or 'plan'}.budget.ratio=0.3; got {data!r}")
        data = dict(data)
        version = data.pop("version", cls.VERSION)
        if not isinstance(version, int) or version > cls.VERSION:
            raise ConfigError(f"plan config version {version!r} is not one this prunekit reads (<= {cls.VERSION})")
        dotted = (lambda k: f"{prefix}.{k}") if prefix else (lambda k: k)  # noqa: E731
        plugins = {}
        for key, kind in (("criterion", CriterionChoice), ("allocator", AllocatorChoice)):
            if key in data:
                plugins[key] = kind.from_mapping(data.pop(key), dotted(key))
        config = from_dict(cls, data, prefix=prefix)
        for key, value in plugins.items():
            setattr(config, key, value)
        return config

    # The generic reader in prunekit.config calls this for a nested ``plan:`` section.
    from_mapping = from_dict

    @classmethod
    def load(cls, path: Union[str, Path]) -> "PlanConfig":
        """Read a YAML / TOML / JSON file holding the plan keys (at the top level or under ``plan:``)."""
        path = Path(path)
        if path.suffix == ".json":
            if not path.exists():
                raise ConfigError(f"config file not found: {path}")
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise ConfigError(f"malformed config file {path}: {exc}") from None
        else:
            data = read_config_file(path)
        if isinstance(data, dict) and set(data) == {"plan"}:
            return cls.from_dict(data["plan"], prefix="plan")
        return cls.from_dict(data)

    # ------------------------------------------------------------------------------------------------ writing
    def to_dict(self) -> Dict[str, Any]:
        """The nested mapping `from_dict` reads back (JSON-ready, with ``version``)."""
        return {"version": self.VERSION, "criterion": self.criterion.to_dict(),
                "allocator": self.allocator.to_dict(), "budget": _jsonable(dataclasses.asdict(self.budget)),
                "constraints": dataclasses.asdict(self.constraints), "tolerance": self.tolerance,
                "allow_inexact": self.allow_inexact, "ignore": list(self.ignore),
                "calibration": dataclasses.asdict(self.calibration), "strict": self.strict}

    def save(self, path: Union[str, Path]) -> Path:
        """Write YAML (``.yaml`` / ``.yml``) or JSON (anything else), atomically."""
        from ..io import atomic_write_text

        path = Path(path)
        if path.suffix in (".yaml", ".yml"):
            import yaml

            text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        else:
            text = json.dumps(self.to_dict(), indent=2)
        return atomic_write_text(path, text)

    # ------------------------------------------------------------------------------------------------ derived
    def effective_round_to(self, model: Optional[nn.Module] = None) -> Optional[int]:
        """``constraints.round_to`` resolved for `model`. A latency budget without one rounds to the hardware's
        channel block (``"auto"``): its cost model times layers at block-aligned widths, and on CPU runtimes an
        unaligned width can cost as much as the next aligned one or more (onnxruntime's blocked layouts pad and
        reorder it), so an unrounded plan would be slower than predicted. ``round_to: 1`` turns this off."""
        from ..allocate.hardware import resolve_round_to

        round_to = self.constraints.round_to
        if round_to is None and self.budget.target == "latency":
            round_to = "auto"
        return resolve_round_to(round_to, model)

    def effective_budget(self) -> Budget:
        """The budget with `ignore` added to its own ignore patterns."""
        return dataclasses.replace(self.budget, ignore=tuple(self.budget.ignore) + tuple(self.ignore))

    def check_calibration(self, has_batches: bool) -> None:
        """Refuse a criterion that needs gradients without calibration data (activations alone can use the
        example inputs).

        Raises:
            ConfigError: naming the criterion and what it needs.
        """
        needs = self.criterion.requires()
        if needs & {"grads", "fisher"} and not has_batches:
            raise ConfigError(f"config key 'criterion.name': criterion '{self.criterion.name}' needs "
                              f"{sorted(needs)} from calibration data: set calibration.data (CLI: --data NAME "
                              f"--calibration-batches N) or pass calibration batches and a loss")
