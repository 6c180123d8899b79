"""Iterative pruning: several smaller steps with a schedule, optionally training in between.

Each step plans on the current (already pruned) model; the steps compose into ONE plan against the original model,
so the result saves and reloads like any other pruned model.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from torch import nn

from ..errors import ConfigError
from .plan import PruningPlan


def compose(original_plan_sizes: Dict[str, int], kept: Dict[str, List[int]], step: PruningPlan) -> None:
    """Update `kept` (group id -> original indices still present) with a plan made on the current model."""
    for gid, idx in step.removed.items():
        if not idx:
            continue
        if gid not in kept:
            raise ConfigError(f"group '{gid}' appeared during iterative pruning; the model's structure changed")
        drop = set(idx)
        kept[gid] = [orig for pos, orig in enumerate(kept[gid]) if pos not in drop]


def iterative_prune(model: nn.Module, inputs: Any, final_ratio: float, steps: int = 3, kind: str = "linear",
                    between_steps: Optional[Callable[[nn.Module, int], None]] = None, **plan_options):
    """Prune to `final_ratio` in `steps` steps following a `PruningSchedule` (linear | geometric | cubic).

    Args:
        between_steps: called as ``fn(model, step)`` after each step except the last (e.g. a short fine-tune).
        plan_options: passed to `prunekit.plan` (criterion, allocator, round_to...).

    Returns:
        (pruned model, one composed `PruningPlan` against the original model).
    """
    from ..allocate.schedule import PruningSchedule
    from ..api import analyze, apply, plan

    schedule = PruningSchedule(final_ratio, steps, kind=kind)
    original = analyze(model, inputs, forward_fn=plan_options.get("forward_fn"))
    sizes = {g.id: g.size for g in original.groups}
    kept = {gid: list(range(size)) for gid, size in sizes.items()}
    first = None
    current = model
    for k in range(steps):
        ratio = schedule.step_ratio(k + 1)  # the schedule counts steps from 1
        if ratio <= 0:
            continue
        p = plan(current, inputs, ratio=min(ratio, 0.999), **plan_options)
        first = first or p
        compose(sizes, kept, p)
        current = apply(current, p, inputs, forward_fn=plan_options.get("forward_fn"))
        if between_steps is not None and k < steps - 1:
            between_steps(current, k)
    removed = {gid: sorted(set(range(sizes[gid])) - set(kept[gid])) for gid in sizes}
    composed = PruningPlan(
        model_fingerprint=first.model_fingerprint if first else "",
        removed={g: r for g, r in removed.items() if r},
        group_sizes=sizes, inputs=first.inputs if first else None,
        model_spec=plan_options.get("model_spec") or {},
        provenance=PruningPlan.provenance_now(iterative_steps=steps, schedule=kind, final_ratio=final_ratio),
    )
    return current, composed
