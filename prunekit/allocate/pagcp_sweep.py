"""The PAGCP oracle sweep (Ye et al., TPAMI 2023, "Performance-aware Approximation of Global Channel Pruning for
Multitask CNNs"): the pieces `prunekit.allocate.pagcp.Pagcp` puts together.

- `solve_decay`: the per-unit tolerance decay lambda with prod_{i<n} (1 + delta0 * lambda^i) = allowance;
- `TaskOracle`: named task losses on a few held-out batches, evaluated on a model whose removed channels are zeroed;
- `soft_mask`: zeroes every parameter slice a group's channels own (producers, norms and consumers), which for an
  exact group equals removing them;
- `PrefixCache`: the outputs of the modules that finish before a unit's first member runs, recorded once per unit
  and replayed for every ratio (the paper's cost is units x ratios x a validation pass; this skips the unchanged
  front of the network);
- `sweep`: units in order, each re-scored on the model already masked before it, stopped at the largest ratio of
  the grid where every task's loss stays within (1 + delta_u) of its running baseline.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import ConfigError
from ..graph.types import ChannelGroup

log = logging.getLogger(__name__)

TaskLoss = Callable[[Any, Any], torch.Tensor]  # (model output, batch) -> scalar loss


def solve_decay(delta0: float, allowance: float, n: int) -> float:
    """lambda > 0 with prod_{i=0}^{n-1} (1 + delta0 * lambda^i) = allowance (the paper's product condition).

    The product grows with lambda, so bisection on log(lambda) finds it.

    Args:
        delta0: the first unit's tolerance (relative loss increase), > 0.
        allowance: the total allowed product of per-unit loss ratios, > 1.
        n: number of units (>= 1).

    Raises:
        ConfigError: allowance <= 1, delta0 <= 0, or n == 1 with allowance != 1 + delta0 (one unit has no decay to
            solve: the allowance is then 1 + delta0 itself and lambda = 1 is returned).
    """
    if delta0 <= 0 or allowance <= 1:
        raise ConfigError(f"pagcp allocator: needs tolerance > 0 and allowance > 1, got {delta0}, {allowance}")
    if n <= 1:
        return 1.0

    def log_product(lam: float) -> float:
        return sum(math.log1p(delta0 * lam ** i) for i in range(n))

    goal = math.log(allowance)
    if goal <= math.log1p(delta0):
        raise ConfigError(f"pagcp allocator: allowance {allowance} is not above 1 + tolerance ({1 + delta0}); the "
                          f"first unit alone may use that much")
    lo, hi = 1e-9, 1.0
    while log_product(hi) < goal:
        hi *= 2.0
        if hi > 1e6:
            raise ConfigError("pagcp allocator: could not solve the tolerance decay (allowance too large)")
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if log_product(mid) < goal:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


def default_forward(model: nn.Module, batch: Any) -> Any:
    """The model on a batch's input: the first item of a (input, target...) tuple, or the batch itself."""
    if isinstance(batch, (tuple, list)):
        return model(batch[0])
    if isinstance(batch, dict) and "input" in batch:
        return model(batch["input"])
    return model(batch)


@dataclass
class TaskOracle:
    """Named task losses on held-out batches.

    Attributes:
        tasks: {name: loss(output, batch) -> scalar tensor}; one per task head (or per loss component).
        batches: a few held-out batches (kept in memory; e.g. ``list(itertools.islice(loader, 4))``).
        forward: forward(model, batch) -> output (default: `default_forward`).
    """

    tasks: Mapping[str, TaskLoss]
    batches: Sequence[Any]
    forward: Callable[[nn.Module, Any], Any] = default_forward

    def __post_init__(self):
        if not self.tasks:
            raise ConfigError("pagcp allocator: needs at least one named task loss")
        self.batches = list(self.batches)
        if not self.batches:
            raise ConfigError("pagcp allocator: the held-out loader gave no batches")

    @torch.no_grad()
    def losses(self, model: nn.Module, prefix: Optional["PrefixCache"] = None) -> Dict[str, float]:
        """Mean loss of every task over the held-out batches (model in eval mode).

        Args:
            model: the (masked) model.
            prefix: replay these recorded module outputs instead of running those modules (`PrefixCache`).
        """
        totals = {name: 0.0 for name in self.tasks}
        for index, batch in enumerate(self.batches):
            if prefix is not None:
                with prefix.replaying(index):
                    out = self.forward(model, batch)
            else:
                out = self.forward(model, batch)
            for name, fn in self.tasks.items():
                value = float(fn(out, batch))
                if not math.isfinite(value):
                    raise ConfigError(f"pagcp allocator: task '{name}' gave a non-finite loss ({value})")
                totals[name] += value
        return {name: v / len(self.batches) for name, v in totals.items()}


def _clone(value: Any) -> Any:
    """A copy of a (nested) module output, so in-place ops downstream cannot change the recorded one."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_clone(v) for v in value)
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    return value


class _PrefixDone(Exception):
    """Raised by the hook of the last recorded module to end a forward pass whose rest is not needed."""


class PrefixCache:
    """Outputs of the modules that finish before a group's first member module starts, per held-out batch.

    Masking a group changes only its members' parameters, so every module whose call ends before the first member
    call begins (and that owns none of the masked parameters and runs once per forward) computes the same output at
    every ratio of the unit. `build` records the largest such modules on the current model; `replaying(i)` makes
    them return their recorded output for batch `i` instead of computing it (the functional glue between modules
    still runs, on the replayed tensors). The result equals a full forward pass (tested).

    Attributes:
        names: the replayed modules, outermost only (e.g. ``conv1``, ``bn1``, ``layer1`` for a unit in ``layer2``).
    """

    def __init__(self, model: nn.Module, names: List[str], outputs: Dict[str, List[Any]]):
        self.model, self.names, self.outputs = model, names, outputs

    @staticmethod
    @torch.no_grad()
    def call_order(model: nn.Module, oracle: "TaskOracle") -> List[Tuple[str, str]]:
        """("start" | "end", module name) events of one forward pass on the first held-out batch (masking
        changes no control flow, so a sweep records them once)."""
        events: List[Tuple[str, str]] = []
        handles = []
        for name, module in model.named_modules():
            if not name:
                continue
            handles.append(module.register_forward_pre_hook(lambda _m, _a, n=name: events.append(("start", n))))
            handles.append(module.register_forward_hook(lambda _m, _a, _o, n=name: events.append(("end", n))))
        try:
            oracle.forward(model, oracle.batches[0])
        finally:
            for h in handles:
                h.remove()
        return events

    @classmethod
    @torch.no_grad()
    def build(cls, model: nn.Module, group: ChannelGroup, oracle: "TaskOracle",
              events: Optional[List[Tuple[str, str]]] = None) -> Optional["PrefixCache"]:
        """Record the replayable prefix for `group` on `model` over `oracle`'s batches (None when nothing before
        the group's first member can be replayed, e.g. a unit in the stem). `events`: `call_order` of the model,
        recorded here when not given."""
        members = {m.module for m in group.members}
        touched = set()
        for m in group.members:
            tensor = getattr(model.get_submodule(m.module), m.param, None)
            if isinstance(tensor, torch.Tensor):
                touched.add(id(tensor))
        modules = dict(model.named_modules())
        if events is None:
            events = cls.call_order(model, oracle)
        first = next((i for i, (kind, name) in enumerate(events) if kind == "start" and name in members), None)
        if first is None:
            return None
        calls: Dict[str, int] = {}
        for kind, name in events:
            if kind == "start":
                calls[name] = calls.get(name, 0) + 1
        done = [name for kind, name in events[:first] if kind == "end"]
        safe = [n for n in done if calls[n] == 1 and n not in members
                and not any(id(p) in touched for p in modules[n].parameters())
                and not any(id(b) in touched for b in modules[n].buffers())]
        safe_set = set(safe)
        outer = [n for n in safe if not any(n.startswith(a + ".") for a in safe_set if a != n)]
        if not outer:
            return None
        outputs: Dict[str, List[Any]] = {n: [] for n in outer}
        last = max(outer, key=lambda n: events.index(("end", n)))

        def record(name: str, output: Any) -> None:
            outputs[name].append(_clone(output))
            if name == last:  # nothing after the prefix is needed: stop this forward pass here
                raise _PrefixDone

        handles = [modules[n].register_forward_hook(lambda _m, _a, o, n=n: record(n, o)) for n in outer]
        try:
            for batch in oracle.batches:
                try:
                    oracle.forward(model, batch)
                except _PrefixDone:
                    pass
        finally:
            for h in handles:
                h.remove()
        if any(len(v) != len(oracle.batches) for v in outputs.values()):
            return None  # a module ran a different number of times than the recorded call order said
        return cls(model, outer, outputs)

    @contextlib.contextmanager
    def replaying(self, index: int):
        """Within the block, the recorded modules return their outputs for held-out batch `index`."""
        patched = []
        try:
            for name in self.names:
                module = self.model.get_submodule(name)
                recorded = self.outputs[name][index]
                module.forward = lambda *args, _r=recorded, **kwargs: _clone(_r)  # instance attribute shadows it
                patched.append(module)
            yield
        finally:
            for module in patched:
                del module.forward


class SoftMask:
    """Zeroes the parameter slices of chosen group channels in `model`, and puts them back.

    Every parameter member of the group is zeroed at the positions the channels own (producing filters, their
    biases, norm scales and shifts, and the consumers' input slices), so no removed channel contributes anywhere.
    """

    def __init__(self, model: nn.Module, group: ChannelGroup):
        self.slices: List[Tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]] = []
        seen = set()
        for m in group.members:
            tensor = getattr(model.get_submodule(m.module), m.param, None)
            if not isinstance(tensor, nn.Parameter) or (id(tensor), m.dim) in seen:
                continue
            seen.add((id(tensor), m.dim))
            index_map = m.index_map if m.index_map.dim() > 1 else m.index_map[:, None]
            self.slices.append((tensor, m.dim, index_map, tensor.detach().clone()))

    @torch.no_grad()
    def apply(self, channels: torch.Tensor) -> None:
        """Restore the originals, then zero `channels` (LongTensor of group channel indices)."""
        for tensor, dim, index_map, original in self.slices:
            tensor.copy_(original)
            if channels.numel():
                positions = torch.unique(index_map[channels].reshape(-1))
                tensor.index_fill_(dim, positions.to(tensor.device), 0.0)


@dataclass
class UnitRecord:
    """What the sweep decided for one unit (a channel group), in sweep order.

    Attributes:
        group: group id. size: its units. removed: units committed. ratio: removed / size.
        stopped_by: the task whose loss first left its tolerance, or None when the unit never violated the oracle
            up to the grid's end (its last safe ratio is then committed).
        tolerance: delta_u used for this unit. loss_ratios: each task's loss at the committed ratio over its
            baseline before this unit. macs_saved: cost saved by the unit alone at the committed ratio (probe cost).
        rho: sum of the tasks' relative loss increases per unit of cost saved (the top-k filter's key).
        evaluations: oracle evaluations. seconds: wall time of the unit.
        kept_by_topk: the top-k filter kept the unit's removal.
        replayed: the modules in front of the unit whose recorded outputs the oracle replayed (`PrefixCache`).
    """

    group: str
    size: int
    removed: int = 0
    ratio: float = 0.0
    stopped_by: Optional[str] = None
    tolerance: float = 0.0
    loss_ratios: Dict[str, float] = field(default_factory=dict)
    macs_saved: float = 0.0
    rho: float = 0.0
    evaluations: int = 0
    seconds: float = 0.0
    kept_by_topk: bool = True
    replayed: List[str] = field(default_factory=list)  # modules before the unit whose outputs were replayed
    order: List[int] = field(default_factory=list)  # the unit's channels, first removed first

    def to_dict(self) -> Dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "order"}


@dataclass
class SweepResult:
    """The sweep's outcome: per-unit records (sweep order), the base losses, the final masked losses, lambda."""

    records: List[UnitRecord]
    base_losses: Dict[str, float]
    final_losses: Dict[str, float]
    decay: float
    seconds: float

    def to_dict(self) -> Dict[str, Any]:
        return {"units": [r.to_dict() for r in self.records], "base_losses": self.base_losses,
                "final_losses": self.final_losses, "decay": self.decay, "seconds": self.seconds,
                "seconds_per_unit": self.seconds / max(len(self.records), 1)}


def sweep(model: nn.Module, groups: Sequence[ChannelGroup], caps: Mapping[str, int], oracle: TaskOracle,
          cost: Optional[Callable[[Mapping[str, int]], float]], score: Callable[[nn.Module, ChannelGroup],
                                                                                 torch.Tensor],
          grid: Sequence[float], delta0: float, allowance: float, probe_ratio: float = 0.3,
          progress: bool = True, cache_inputs: bool = True) -> SweepResult:
    """The greedy sequential sweep on a copy of `model` (the model itself is not changed).

    Args:
        model: the trained model.
        groups: the units (eligible channel groups); `caps[g.id]` is the most units each may lose.
        oracle: task losses on held-out batches.
        cost: cost(allocation) -> float (MACs), used to order units by the cost a probe ratio saves and for the
            loss-per-cost key; None orders by group size.
        score: score(model, group) -> [size] saliency on the current (masked) model; lowest go first.
        grid: increasing ratios in (0, 1).
        delta0 / allowance: first tolerance and the total product of per-unit loss ratios.
        probe_ratio: ratio at which the cost saved orders the units.
        progress: progress bar over units x ratios.
        cache_inputs: replay the outputs of the modules before each unit (`PrefixCache`) instead of recomputing
            them at every ratio.

    Returns:
        a `SweepResult`; ``records[i].removed`` are the committed counts.
    """
    start = time.perf_counter()
    work = copy.deepcopy(model).eval()
    base = oracle.losses(work)
    baseline = dict(base)
    units = [g for g in groups if caps.get(g.id, 0) > 0]
    base_cost = float(cost({})) if cost is not None else 0.0

    def saved(gid: str, n: int) -> float:
        if cost is None:
            return float(n)
        return base_cost - float(cost({gid: n}))

    probe = {g.id: saved(g.id, min(caps[g.id], max(1, int(probe_ratio * g.size)))) for g in units}
    decay = solve_decay(delta0, allowance, max(len(units), 1))
    # big savers first while the tolerance is loose (lambda <= 1), as the reference code orders them
    units.sort(key=lambda g: probe[g.id], reverse=decay <= 1.0)
    records: List[UnitRecord] = []
    delta = delta0
    events = PrefixCache.call_order(work, oracle) if cache_inputs and units else None
    from rich.progress import Progress

    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task("pagcp sweep (units x ratios)", total=len(units) * len(grid))
        for i, group in enumerate(units):
            t0 = time.perf_counter()
            rec = UnitRecord(group.id, group.size, tolerance=delta)
            order = torch.argsort(score(work, group).float().cpu(), stable=True)
            mask = SoftMask(work, group)
            prefix = PrefixCache.build(work, group, oracle, events) if cache_inputs else None
            committed, committed_losses, tried, stepped = 0, dict(baseline), set(), 0
            for r in grid:
                bar.advance(task)
                stepped += 1
                n = min(int(math.floor(r * group.size + 1e-9)), caps[group.id])
                if n <= committed or n in tried:
                    continue
                tried.add(n)
                mask.apply(order[:n])
                losses = oracle.losses(work, prefix)
                rec.evaluations += 1
                worst = max(losses, key=lambda t: losses[t] / max(baseline[t], 1e-12))
                if losses[worst] > (1.0 + delta) * baseline[worst]:
                    rec.stopped_by = worst
                    break
                committed, committed_losses = n, losses
            bar.advance(task, len(grid) - stepped)
            mask.apply(order[:committed])  # commit the last safe ratio (also when the grid ran out)
            rec.removed, rec.ratio, rec.order = committed, committed / group.size, order.tolist()
            rec.loss_ratios = {t: committed_losses[t] / max(baseline[t], 1e-12) for t in baseline}
            rec.macs_saved = saved(group.id, committed) if committed else 0.0
            increase = sum(v - 1.0 for v in rec.loss_ratios.values())
            rec.rho = increase / rec.macs_saved if rec.macs_saved > 0 else math.inf
            baseline = {t: max(baseline[t], committed_losses[t]) for t in baseline}
            rec.seconds = time.perf_counter() - t0
            rec.replayed = list(prefix.names) if prefix is not None else []
            del prefix
            records.append(rec)
            log.debug("pagcp unit %d/%d %s: removed %d/%d, stopped by %s (%.2fs)", i + 1, len(units), group.id,
                      committed, group.size, rec.stopped_by, rec.seconds)
            delta *= decay  # delta_u = delta0 * lambda^u: the product of (1 + delta_u) is the allowance
    final = oracle.losses(work)
    return SweepResult(records, base, final, decay, time.perf_counter() - start)


def topk_filter(records: Sequence[UnitRecord], topk: float) -> List[UnitRecord]:
    """Marks the `topk` fraction of pruned units with the smallest rho as kept (the others get no pruning);
    returns the kept ones, cheapest loss per cost first."""
    pruned = sorted((r for r in records if r.removed > 0), key=lambda r: (r.rho, r.group))
    keep = int(math.ceil(topk * len(pruned) - 1e-9))
    for j, r in enumerate(pruned):
        r.kept_by_topk = j < keep
    for r in records:
        if r.removed == 0:
            r.kept_by_topk = False
    return pruned[:keep]
