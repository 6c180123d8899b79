"""Planning: deciding what to remove, as named public steps over one `PlanConfig`.

    analysis = analyse(model, inputs)                        # graph: channel groups (never mutated below)
    groups = eligibility(analysis, config)                   # copies, with inexact groups refused unless allowed
    scores = scoring(model, groups, config, calibration...)  # importance: `Scores`
    allocation = allocate(model, groups, scores, config, inputs)   # allocate + cost model: `Allocation`
    removed = selection(groups, scores, allocation)          # lowest-scoring units per group
    plan = make_plan(model, analysis, removed, allocation, config, inputs)   # `PruningPlan`

`prunekit.plan(model, inputs, config)` runs them all (`run`). Cost models (params, MACs, measured latency) live
side by side in `prunekit.planning.cost` and `prunekit.planning.latency`.
"""
from .config import AllocatorChoice, CalibrationConfig, Constraints, CriterionChoice, PlanConfig  # noqa: F401
from .steps import (allocate, analyse, cost_model, eligibility, make_plan, run, scoring,  # noqa: F401
                    selection)
