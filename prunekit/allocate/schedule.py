"""Iterative pruning schedules: the ratio reached after each of n steps, in the style of LR schedulers.

Iterative pruning (prune a little, fine-tune, repeat) in the manner of Han et al. 2015 and Torch-Pruning's
``iterative_steps``; the geometric schedule removes the same fraction of the *remaining* units at every step
(Zhu & Gupta 2017 use a cubic variant of the same idea; ``kind="cubic"`` gives it).

``ratio(k)`` is the cumulative fraction of the original units removed after step k (k = 1..steps);
``step_ratio(k)`` is the fraction of the units present before step k that step k removes, which is what a policy
gets when each step re-traces the already pruned model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List

from ..errors import ConfigError

KINDS = ("linear", "geometric", "cubic")


@dataclass
class PruningSchedule:
    """Cumulative pruning ratios over `steps` steps ending at `final_ratio`.

    Attributes:
        final_ratio: fraction of units removed after the last step, in [0, 1).
        steps: number of pruning steps (>= 1).
        kind: ``linear`` (r_k = R k / n), ``geometric`` (kept fraction (1 - R)^(k / n)) or ``cubic``
            (r_k = R (1 - (1 - k / n)^3)).
    """

    final_ratio: float
    steps: int
    kind: str = "linear"

    def __post_init__(self):
        if not 0.0 <= self.final_ratio < 1.0:
            raise ConfigError(f"pruning schedule: final_ratio must lie in [0, 1), got {self.final_ratio}")
        if self.steps < 1:
            raise ConfigError(f"pruning schedule: steps must be >= 1, got {self.steps}")
        if self.kind not in KINDS:
            raise ConfigError(f"pruning schedule: kind must be one of {KINDS}, got {self.kind!r}")
        self.last_step = 0

    def ratio(self, step: int) -> float:
        """Cumulative ratio after `step` steps (0 before the first, `final_ratio` from `steps` on)."""
        t = min(max(step, 0), self.steps) / self.steps
        if self.kind == "linear":
            return self.final_ratio * t
        if self.kind == "geometric":
            return 1.0 - (1.0 - self.final_ratio) ** t
        return self.final_ratio * (1.0 - (1.0 - t) ** 3)

    def step_ratio(self, step: int) -> float:
        """Fraction of the units left after step - 1 that step `step` removes."""
        before, after = self.ratio(step - 1), self.ratio(step)
        return (after - before) / (1.0 - before)

    def ratios(self) -> List[float]:
        """Cumulative ratios after steps 1..steps."""
        return [self.ratio(k) for k in range(1, self.steps + 1)]

    def __iter__(self) -> Iterator[float]:
        return iter(self.ratios())

    # LR-scheduler-like use: sched.step(); sched.get_ratio()
    def step(self) -> float:
        """Advance one step and return the new cumulative ratio."""
        self.last_step = min(self.last_step + 1, self.steps)
        return self.ratio(self.last_step)

    def get_ratio(self) -> float:
        return self.ratio(self.last_step)
