"""Settings of the PDP and gradual-magnitude sparsifiers (typed, validated)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional, Tuple

from ...errors import ConfigError

#: PDP's temperature when none is given, per pattern kind.
DEFAULT_TEMPERATURE = {"unstructured": 0.1, "nm": 0.1, "channel": 0.005}

PATTERNS = ("unstructured", "channel", "N:M (e.g. '2:4', quoted in YAML)")


def parse_pattern(pattern) -> Tuple[str, int, int]:
    """``"unstructured"`` -> ("unstructured", 0, 0); ``"2:4"`` -> ("nm", 2, 4); ``"channel"`` -> ("channel", 0, 0).

    Raises:
        ConfigError: for anything else (YAML 1.1 reads an unquoted 2:4 as the number 124; that is named too).
    """
    if isinstance(pattern, int):
        raise ConfigError(f"pdp: pattern {pattern} is a number: quote N:M patterns in YAML (pattern: \"2:4\")")
    text = str(pattern).strip().lower()
    if text in ("unstructured", "channel"):
        return text, 0, 0
    if ":" in text:
        a, _, b = text.partition(":")
        if a.isdigit() and b.isdigit() and 0 < int(a) < int(b):
            return "nm", int(a), int(b)
    raise ConfigError(f"pdp: pattern must be one of {', '.join(PATTERNS)} with 0 < N < M, got {pattern!r}")


@dataclass
class SparsityConfig:
    """What to sparsify and how the target grows (shared by PDP and gradual magnitude pruning).

    Attributes:
        pattern: ``unstructured``, ``"N:M"`` (N kept of every M consecutive weights along the input dimension:
            ``"2:4"``, ``"1:4"``, ``"4:8"``) or ``channel`` (whole channels of the engine's channel groups).
        sparsity: final fraction pruned (unstructured: of all targeted weights; channel: of each group's channels).
            Ignored for N:M, whose sparsity is 1 - N/M.
        allocation: ``global`` (per-layer targets from one global magnitude sort at the end of warm-up) or
            ``uniform`` (the same fraction in every layer). Unstructured only; channels are always uniform (filter
            norms of different groups are not comparable).
        warmup_epochs: training with dense weights before pruning starts (may be fractional).
        ramp_epochs: epochs over which the target grows to its final value (PDP: linear, 1 / ramp_epochs = the
            paper's epsilon per epoch; GMP: Zhu and Gupta's cubic). 0 = at once.
        include / exclude: glob patterns over module names (``"layer1.*"``); empty include = every layer that
            computes a matrix product (Linear, ConvNd, MultiheadAttention projections).
        min_keep: channels every group keeps (channel pattern).
    """

    SECTION: ClassVar[str] = "sparsify"

    pattern: str = "unstructured"
    sparsity: float = 0.9
    allocation: str = "global"
    warmup_epochs: float = 0.0
    ramp_epochs: float = 1.0
    include: Tuple[str, ...] = ()
    exclude: Tuple[str, ...] = ()
    min_keep: int = 1

    def __post_init__(self):
        self.kind, self.n, self.m = parse_pattern(self.pattern)
        if self.kind != "nm" and not 0.0 < self.sparsity < 1.0:
            raise ConfigError(f"{self.SECTION}: sparsity must lie in (0, 1), got {self.sparsity}")
        if self.allocation not in ("global", "uniform"):
            raise ConfigError(f"{self.SECTION}: allocation must be 'global' or 'uniform', got {self.allocation!r}")
        if self.warmup_epochs < 0 or self.ramp_epochs < 0:
            raise ConfigError(f"{self.SECTION}: warmup_epochs and ramp_epochs must be >= 0")
        if self.min_keep < 1:
            raise ConfigError(f"{self.SECTION}: min_keep must be >= 1, got {self.min_keep}")
        self.include, self.exclude = tuple(self.include), tuple(self.exclude)

    @property
    def final_sparsity(self) -> float:
        return 1.0 - self.n / self.m if self.kind == "nm" else self.sparsity


@dataclass
class PDPConfig(SparsityConfig):
    """PDP (Cho et al. 2023) settings.

    Attributes:
        temperature: dimensionless temperature; each layer uses ``temperature * mean(w^2)`` of its current weights
            (channel pattern: of its squared channel norms; see `masks.relative_temperature`). None: 0.1 for
            unstructured and N:M, 0.005 for channels, whose norms spread far less around their mean than single
            weights do (in short ResNet-20 runs, 0.1 left most channel masks undecided and scored lowest).
        track_every: record sparsity, undecided share and recovery events every this many steps.
    """

    temperature: Optional[float] = None
    track_every: int = 1

    def __post_init__(self):
        super().__post_init__()
        if self.temperature is None:
            self.temperature = DEFAULT_TEMPERATURE[self.kind]
        if not self.temperature > 0:
            raise ConfigError(f"{self.SECTION}: temperature must be > 0, got {self.temperature}")
        if self.track_every < 1:
            raise ConfigError(f"{self.SECTION}: track_every must be >= 1, got {self.track_every}")


@dataclass
class GMPConfig(SparsityConfig):
    """Gradual magnitude pruning (Zhu and Gupta 2017) settings.

    Attributes:
        update_every: steps between mask updates during the cubic ramp (the paper's delta t).
    """

    update_every: int = 10

    def __post_init__(self):
        super().__post_init__()
        if self.update_every < 1:
            raise ConfigError(f"{self.SECTION}: update_every must be >= 1, got {self.update_every}")


def check_type(value, cls, what: str) -> None:
    if not isinstance(value, cls):
        raise ConfigError(f"pdp: {what} must be a {cls.__name__}, got {type(value).__name__}")


