"""The planning chain as named steps. Each takes what the previous one returned and changes nothing it was given
(the user's model, the `Analysis`, its groups).

A recipe that needs another tolerance, another cost model or its own allocator calls these steps directly instead
of copying the chain; `run` is the whole chain, and `prunekit.plan` is `run` with a `PlanConfig`.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..graph import Analysis
from ..graph.types import Allocation, Budget, ChannelGroup, Scores
from ..prune.plan import PruningPlan, describe_inputs, model_fingerprint
from .config import PlanConfig
from .cost import Cost, macs_cost, params_cost

INEXACT_REASON = "inexact removal not allowed (set allow_inexact)"


@contextlib.contextmanager
def model_unchanged(model: nn.Module) -> Iterator[None]:
    """Run the block and put back every buffer (BatchNorm running statistics, counters) and module mode, so
    tracing or collecting on a model in ``train()`` mode leaves it exactly as it was."""
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    modes = {name: m.training for name, m in model.named_modules()}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in buffers and b.shape == buffers[name].shape:
                    b.copy_(buffers[name])
        for name, m in model.named_modules():
            if name in modes:
                m.training = modes[name]


def analyse(model: nn.Module, inputs: Any, forward_fn: Optional[Callable] = None, strict: bool = False) -> Analysis:
    """Trace the model into channel groups (`prunekit.analyze`), leaving its buffers and modes as found."""
    from ..graph import analyze

    with model_unchanged(model):
        return analyze(model, inputs, forward_fn=forward_fn, strict=strict)


def eligibility(analysis: Analysis, config: Optional[PlanConfig] = None, allow_inexact: Optional[bool] = None
                ) -> List[ChannelGroup]:
    """Copies of the analysis' groups, with inexact groups made unprunable unless inexact removal is allowed.

    Args:
        analysis: from `analyse` (not modified).
        config: its ``allow_inexact`` is used unless `allow_inexact` is given.

    Returns:
        one group per analysis group (shallow copies; members shared, flags and reasons copied).
    """
    allow = allow_inexact if allow_inexact is not None else bool(config and config.allow_inexact)
    out = []
    for g in analysis.groups:
        g2 = copy.copy(g)
        g2.reasons, g2.tags = list(g.reasons), dict(g.tags)
        if g.prunable and not g.exact and not allow:
            g2.prunable = False
            g2.reasons.append(INEXACT_REASON)
        out.append(g2)
    return out


def scoring(model: nn.Module, groups: Sequence[ChannelGroup], config: PlanConfig, inputs: Any = None,
            calibration: Optional[Iterable[Any]] = None, loss_fn: Optional[Callable] = None,
            forward_fn: Optional[Callable] = None) -> Scores:
    """Score the prunable groups with ``config.criterion``, collecting calibration statistics when it needs them.

    Args:
        model: the model (left as found: the collector restores modes, grad flags and hooks; buffers too).
        groups: from `eligibility`.
        config: criterion name and options.
        inputs: example inputs; a criterion that needs only activations uses them when `calibration` is None.
        calibration: batches; `loss_fn(output, batch)` for gradients (or the model's own ``output.loss``).

    Raises:
        ConfigError: the criterion needs gradients and no calibration batches were given.
    """
    from ..importance.base import create
    from ..importance.collector import collect

    crit = create(config.criterion.name, None, **config.criterion.options)
    config.check_calibration(calibration is not None)
    stats = None
    if crit.requires:
        batches = calibration if calibration is not None else [inputs]
        with model_unchanged(model):
            stats = collect(model, batches, crit.requires, loss_fn=loss_fn, groups=groups, forward_fn=forward_fn)
    scores = crit.score(model, [g for g in groups if g.prunable], stats)
    return scores if isinstance(scores, Scores) else Scores(scores, criterion=config.criterion.name)


def cost_model(target: Optional[str], model: nn.Module, groups: Sequence[ChannelGroup], inputs: Any,
               forward_fn: Optional[Callable] = None, runtime: str = "eager", **latency_options: Any
               ) -> Optional[Cost]:
    """The cost model of a budget target: ``params``, ``macs``, ``latency`` (on `runtime`), or None for a ratio.

    `latency_options` go to `prunekit.planning.latency.latency_cost` (cache folder, widths, repeats).
    """
    if target is None:
        return None
    if target == "params":
        return params_cost(model, groups)
    if target == "macs":
        return macs_cost(model, groups, inputs, forward_fn)
    if target == "latency":
        from .latency import latency_cost

        if forward_fn is not None:
            raise ConfigError("a latency budget times the model as called with its example inputs; forward_fn is "
                              "not supported")
        return latency_cost(model, groups, inputs, runtime=runtime, **latency_options)
    raise ConfigError(f"budget target must be one of {Budget.TARGETS}, got {target!r}")


def allocate(model: nn.Module, groups: Sequence[ChannelGroup], scores: Scores, config: PlanConfig, inputs: Any = None,
             forward_fn: Optional[Callable] = None, policy: Any = None, cost: Optional[Cost] = None,
             max_evaluations: int = 40) -> Allocation:
    """How many units each group loses under ``config.budget`` (constraints applied).

    Args:
        model / groups / scores: as from the earlier steps.
        config: allocator, budget, constraints, tolerance, ignore.
        inputs / forward_fn: for the MACs and latency cost models.
        policy: an `Allocator` instance replacing ``config.allocator`` (recipes with their own policy object).
        cost: a cost model replacing the budget target's default one.

    Returns:
        an `Allocation` carrying the searched ratio and its cost, target and base cost.
    """
    from ..allocate import ALLOCATORS
    from ..allocate.budget import allocate_budget

    budget = config.effective_budget()
    if policy is None:
        options = dict(config.allocator.options)
        round_to = config.effective_round_to(model)
        for key, value in (("round_to", round_to), ("max_ratio", config.constraints.max_ratio),
                           ("min_keep_channels", config.constraints.min_keep_channels)):
            if value is not None:
                options[key] = value
        policy = ALLOCATORS.get(config.allocator.name)(None, **options)
    if cost is None:
        cost = cost_model(budget.target, model, groups, inputs, forward_fn, runtime=budget.runtime)
    result = allocate_budget(policy, groups, scores, budget, cost=cost, model=model, tol=config.tolerance,
                             max_evaluations=max_evaluations)
    return result.allocation


def selection(groups: Sequence[ChannelGroup], scores: Scores, allocation: Allocation) -> Dict[str, torch.Tensor]:
    """The lowest-scoring `allocation[g]` units of each group: {group id: sorted LongTensor [n]}."""
    from ..allocate.select import select

    return select(groups, scores, allocation)


def make_plan(model: nn.Module, analysis: Analysis, removed: Dict[str, torch.Tensor], allocation: Allocation,
              config: PlanConfig, inputs: Any = None, model_spec: Optional[Dict] = None, **provenance: Any
              ) -> PruningPlan:
    """The `PruningPlan`: removed indices, group sizes, inputs, how to rebuild the model, and provenance (the whole
    `PlanConfig` under ``plan_config``, the searched ratio and costs, operations the engine did not know)."""

    facts = {"criterion": config.criterion.name, "allocator": config.allocator.name, "ratio": allocation.ratio,
             "budget": config.budget.target or "ratio", "allow_inexact": config.allow_inexact,
             "round_to": config.effective_round_to(model), "cost": allocation.cost,
             "target_cost": allocation.target_cost, "base_cost": allocation.base_cost,
             "tolerance": config.tolerance, "unknown_ops": analysis.unknown_ops[:20],
             "plan_config": config.to_dict(), **provenance}
    return PruningPlan(model_fingerprint=model_fingerprint(model),
                       removed={k: [int(i) for i in v.tolist()] for k, v in removed.items()},
                       group_sizes={g.id: g.size for g in analysis.groups}, inputs=describe_inputs(inputs),
                       model_spec=dict(model_spec or {}), provenance=PruningPlan.provenance_now(**facts))


def run(model: nn.Module, inputs: Any, config: Optional[PlanConfig] = None, *, analysis: Optional[Analysis] = None,
        calibration: Optional[Iterable[Any]] = None, loss_fn: Optional[Callable] = None,
        forward_fn: Optional[Callable] = None, model_spec: Optional[Dict] = None) -> PruningPlan:
    """The whole chain: analyse -> eligibility -> scoring -> allocate -> selection -> make_plan."""
    from ..graph.examples import first_example
    from ..graph.summary import log_summary

    config = config or PlanConfig()
    config.check_calibration(calibration is not None)
    analysis = analysis or analyse(model, inputs, forward_fn, config.strict)
    # ignore patterns cover containers' children, and a pattern naming no module is an error (graph.patterns)
    analysis = analysis.with_ignore(model, config.effective_budget().ignore)
    one = first_example(inputs)  # several example inputs (prunekit.Examples): costs and activations use the first
    groups = eligibility(analysis, config)
    scores = scoring(model, groups, config, one, calibration, loss_fn, forward_fn)
    allocation = allocate(model, groups, scores, config, one, forward_fn)
    removed = selection(groups, scores, allocation)
    plan = make_plan(model, analysis, removed, allocation, config, one, model_spec)
    # not serialised: the refusal summary (logged, printed by the CLI), and the analysis, which `prunekit.apply`
    # on this same model reuses instead of tracing again
    plan.refusal_summary = analysis.__class__(**{**analysis.__dict__, "groups": groups}).summary(plan.removed)
    log_summary(plan.refusal_summary, "plan")
    plan._analysis = analysis
    return plan

