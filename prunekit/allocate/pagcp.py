"""PAGCP: performance-aware global channel pruning for multitask models (Ye et al., TPAMI 2023).

Units (the engine's channel groups, residual-coupled ones included) are swept one after another; each is re-scored
on the model already (soft-)pruned before it and stopped at the largest ratio of a grid where *every* task's
held-out loss stays within (1 + delta_u) of its running baseline. delta_u = tolerance * lambda^u with lambda solved
from the overall allowance: prod_u (1 + delta_u) = allowance, so right after pruning each task's loss is at most
`allowance` times its starting value on the held-out batches. A unit that never violates commits its last safe
ratio (the reference code forgets to, see methods.md section 2, pitfalls). The `topk` fraction of units with the
smallest loss increase per MAC saved is kept.

Use (the oracle needs the model, named task losses and held-out batches, which a plan config cannot carry):

    policy = Pagcp(tolerance=0.05, allowance=1.5)
    policy.attach(model, {"cls": cls_loss, "rot": rot_loss}, held_out_batches)
    allocation = planning.allocate(model, groups, scores, config, inputs, policy=policy)
    removed = planning.selection(groups, policy.sweep_scores(scores), allocation)   # the oracle's channels
    plan = planning.make_plan(model, analysis, removed, allocation, config, inputs, pagcp=policy.provenance())

Cost: units x ratios oracle evaluations, each over every held-out batch; with `cache_inputs` (default) each unit's
evaluations replay the recorded outputs of the modules in front of it (`pagcp_sweep.PrefixCache`), so a unit deep
in the network runs only the rest of it. Detectors: `pagcp_detect.DetectionTasks` gives the YOLOv8 loss components
(box, cls, dfl) as tasks.

Budgets: the sweep's committed removals are applied in order of loss per MAC saved (cheapest first); a ratio r
applies the first r of them (over all units, the last unit taken partly), so a params / MACs budget search finds the
cheapest-loss subset that meets the target. When even every safe removal misses the target the search reports the
budget unreachable: raise the allowance. Without an attached oracle the policy has no performance signal and ranks
like `global` (a warning says so).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import ConfigError
from ..graph.types import Allocation, ChannelGroup, Scores
from .global_rank import GlobalRank, GlobalRankConfig
from .pagcp_sweep import SweepResult, TaskLoss, TaskOracle, default_forward, sweep, topk_filter

log = logging.getLogger(__name__)


@dataclass
class PagcpConfig(GlobalRankConfig):
    """PAGCP options (``plan.allocator: {name: pagcp, ...}``).

    Attributes:
        tolerance: delta_0, the first unit's allowed relative loss increase per task (paper: 0.05).
        allowance: Theta, the allowed product of per-unit loss ratios over the sweep (paper: 5-6, followed by
            fine-tuning); lambda is solved from it. Must exceed 1 + tolerance.
        ratio_min / ratio_max / ratio_steps: the ratio grid, linspace (paper: 0.05, 0.95, 19).
        probe_ratio: units are ordered by the MACs that removing this fraction saves.
        topk: fraction of pruned units kept by the loss-per-MAC filter, in (0, 1].
        criterion: saliency recomputed on the masked model for each unit (a registered criterion; ``l1``).
        progress: show a progress bar over units x ratios.
        cache_inputs: record, once per unit, the outputs of the modules that run before it and replay them at
            every ratio instead of a full forward pass (same losses, less compute for units deep in the model).
    """

    tolerance: float = 0.05
    allowance: float = 2.0
    ratio_min: float = 0.05
    ratio_max: float = 0.95
    ratio_steps: int = 19
    probe_ratio: float = 0.3
    topk: float = 1.0
    criterion: str = "l1"
    progress: bool = True
    cache_inputs: bool = True

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 < self.tolerance:
            raise ConfigError(f"pagcp allocator: tolerance must be > 0, got {self.tolerance}")
        if not self.allowance > 1.0 + self.tolerance:
            raise ConfigError(f"pagcp allocator: allowance must exceed 1 + tolerance ({1 + self.tolerance}), got "
                              f"{self.allowance}")
        if not 0.0 < self.ratio_min <= self.ratio_max < 1.0 or self.ratio_steps < 1:
            raise ConfigError(f"pagcp allocator: needs 0 < ratio_min <= ratio_max < 1 and ratio_steps >= 1, got "
                              f"{self.ratio_min}, {self.ratio_max}, {self.ratio_steps}")
        if not 0.0 < self.probe_ratio < 1.0:
            raise ConfigError(f"pagcp allocator: probe_ratio must lie in (0, 1), got {self.probe_ratio}")
        if not 0.0 < self.topk <= 1.0:
            raise ConfigError(f"pagcp allocator: topk must lie in (0, 1], got {self.topk}")

    def grid(self) -> List[float]:
        """The ratio grid, increasing."""
        if self.ratio_steps == 1:
            return [self.ratio_max]
        step = (self.ratio_max - self.ratio_min) / (self.ratio_steps - 1)
        return [self.ratio_min + i * step for i in range(self.ratio_steps)]


class Pagcp(GlobalRank):
    """The PAGCP allocator: attach an oracle (`attach`), then allocate like any policy."""

    Config = PagcpConfig
    refinable = False  # a budget search must not add units the oracle did not pass

    def __init__(self, config: Any = None, **overrides: Any):
        super().__init__(config, **overrides)
        self.model: Optional[nn.Module] = None
        self.oracle: Optional[TaskOracle] = None
        self.cost: Optional[Callable] = None
        self.result: Optional[SweepResult] = None
        self._swept: Optional[Tuple[str, ...]] = None
        self._order: List[Tuple[str, int]] = []

    def attach(self, model: nn.Module, tasks: Mapping[str, TaskLoss], batches: Sequence[Any],
               forward: Callable[[nn.Module, Any], Any] = default_forward,
               cost: Optional[Callable] = None) -> "Pagcp":
        """Give the policy its oracle.

        Args:
            model: the trained model the groups came from (not modified; the sweep works on a copy).
            tasks: {name: loss(output, batch) -> scalar}; one entry is single-task PAGCP.
            batches: held-out batches (a few; every oracle evaluation runs all of them).
            forward: forward(model, batch) -> output.
            cost: cost(allocation) -> float for the unit order and the top-k key (e.g.
                `prunekit.planning.cost.macs_cost`); a budget search's cost model replaces it when there is one.
        """
        self.model, self.oracle, self.cost = model, TaskOracle(dict(tasks), batches, forward), cost
        self.result, self._swept = None, None
        return self

    def prepare(self, groups: Sequence[ChannelGroup], scores: Optional[Scores], cost: Any) -> None:
        if cost is not None:
            self.cost = cost

    def propose(self, groups: List[ChannelGroup], scores: Optional[Scores], ratio: float) -> Allocation:
        if self.oracle is None:
            log.warning("pagcp allocator: no task oracle attached (Pagcp.attach); ranking like 'global'")
            return super().propose(groups, scores, ratio)
        key = tuple(g.id for g in groups)
        if self._swept != key:
            self._run(groups)
            self._swept = key
        total = sum(n for _, n in self._order)
        budget = int(math.floor(ratio * total + 1e-9)) if ratio < 0.999 else total
        out: Dict[str, int] = {g.id: 0 for g in groups}
        for gid, n in self._order:  # cheapest loss per MAC first; the last unit taken partly
            take = min(n, budget)
            out[gid] = take
            budget -= take
            if budget <= 0:
                break
        return Allocation(out)

    def _run(self, groups: List[ChannelGroup]) -> None:
        from ..importance.base import create

        criterion = create(self.config.criterion)

        def score(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
            values = criterion.score(model, [group], None)
            if group.id not in values:
                raise ConfigError(f"pagcp allocator: criterion '{self.config.criterion}' cannot score group "
                                  f"{group.id}")
            return values[group.id]

        self.result = sweep(self.model, groups, super().caps(groups), self.oracle, self.cost, score, self.config.grid(),
                            self.config.tolerance, self.config.allowance, self.config.probe_ratio,
                            self.config.progress, self.config.cache_inputs)
        kept = topk_filter(self.result.records, self.config.topk)
        self._order = [(r.group, r.removed) for r in kept]

    def sweep_scores(self, scores: Scores) -> Scores:
        """`scores` with every swept unit's scores replaced by its sweep order (rank 1 = removed first), so
        `planning.selection` removes exactly the channels the oracle evaluated: the sweep re-scores each unit on
        the model masked before it, which can rank its channels differently from the unpruned model."""
        out = Scores(dict(scores), criterion=f"pagcp-sweep({self.config.criterion})")
        for r in self.result.records if self.result is not None else []:
            rank = torch.empty(r.size)
            rank[torch.tensor(r.order, dtype=torch.long)] = torch.arange(1, r.size + 1, dtype=torch.float32)
            out[r.group] = rank
        return out

    def caps(self, groups) -> Dict[str, int]:
        """After the sweep, a unit may lose at most what the oracle passed (so no budget refinement adds more)."""
        caps = super().caps(groups)
        if self.result is None:
            return caps
        passed = dict(self._order)
        return {gid: min(c, passed.get(gid, 0)) for gid, c in caps.items()}

    def provenance(self) -> Dict[str, Any]:
        """The sweep log for the plan's provenance: options, per-unit records (sweep order, which task stopped
        each unit), base and final held-out losses, lambda, timing."""
        if self.result is None:
            return {"swept": False}
        keys = ("tolerance", "allowance", "ratio_min", "ratio_max", "ratio_steps", "probe_ratio", "topk", "criterion",
                "cache_inputs")
        return {"swept": True, "tasks": list(self.oracle.tasks), "config": {k: getattr(self.config, k) for k in keys},
                **self.result.to_dict()}
