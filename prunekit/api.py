"""The short public API: plan, apply, verify, prune, save, load.

    plan = prunekit.plan(model, inputs, PlanConfig.load("plan.yaml"))    # or ratio=0.5, criterion="l1", ...
    pruned = prunekit.apply(model, plan, inputs)          # verified against the masked original
    prunekit.save(pruned, plan, "out/")                    # safetensors + plan.json, no pickle
    again = prunekit.load("out/", model=build_original())  # replays the plan, loads the weights
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Optional, Union

from torch import nn

from .errors import ConfigError
from .graph import Analysis, analyze
from .graph.types import Budget
from .prune.plan import PruningPlan, make_inputs
from .prune.verify import VerifyReport, verify_pruning

if TYPE_CHECKING:
    from .planning import PlanConfig


_KEYWORDS = ("ratio", "criterion", "allocator", "budget", "allow_inexact", "round_to", "max_ratio", "ignore",
             "criterion_options", "allocator_options", "strict")


def plan(model: nn.Module, inputs: Any, config: Union["PlanConfig", Dict, str, Path, float, None] = None, *,
         forward_fn: Optional[Callable] = None, calibration: Optional[Iterable[Any]] = None,
         loss_fn: Optional[Callable] = None, model_spec: Optional[Dict] = None, analysis: Optional[Analysis] = None,
         **keywords: Any) -> PruningPlan:
    """Decide what to remove. The model is not modified (its buffers and modes are put back after tracing).

        prunekit.plan(model, x, PlanConfig.load("plan.yaml"))
        prunekit.plan(model, x, {"criterion": "taylor", "budget": {"target": "macs", "keep_fraction": 0.5}},
                      calibration=batches, loss_fn=loss)
        prunekit.plan(model, x, ratio=0.5, criterion="l1", allocator="uniform")   # keyword form (compatibility)

    Args:
        model: any nn.Module.
        inputs: example inputs (tensor, tuple, dict) used to trace the model.
        config: a `prunekit.planning.PlanConfig`, its nested dict, or a YAML / JSON file path (see
            `prunekit.planning.config` for the keys). The whole config is recorded in the plan's provenance.
        forward_fn: ``forward_fn(model, inputs)`` when the model is not called as ``model(inputs)``.
        calibration: batches for criteria that need activations or gradients; `loss_fn(output, batch)` for grads.
        model_spec: how to rebuild the original model (``{"registry": name}``), saved in the plan.
        analysis: a previous `prunekit.analyze(model, inputs)` to reuse (not modified).
        **keywords: the keyword form instead of `config`: ``ratio``, ``criterion``, ``allocator``, ``budget``
            (a `Budget`), ``allow_inexact``, ``round_to``, ``max_ratio``, ``ignore``, ``criterion_options``,
            ``allocator_options``, ``strict``; it builds the equivalent `PlanConfig`.

    Returns:
        a `PruningPlan`.
    """
    from .planning import run

    return run(model, inputs, plan_config(config, **keywords), analysis=analysis, calibration=calibration,
               loss_fn=loss_fn, forward_fn=forward_fn, model_spec=model_spec)


def plan_config(config: Union["PlanConfig", Dict, str, Path, float, None] = None, **keywords: Any) -> "PlanConfig":
    """A `PlanConfig` from a config, a dict, a file path, or the keyword form of `plan` (see there)."""
    import dataclasses

    from .planning import PlanConfig

    unknown = sorted(set(keywords) - set(_KEYWORDS))
    if unknown:
        raise ConfigError(f"prunekit.plan: unknown keyword arguments {unknown}; known: {sorted(_KEYWORDS)} (or pass "
                          f"a PlanConfig)")
    if isinstance(config, (int, float)) and not isinstance(config, bool):  # the old positional ratio
        keywords.setdefault("ratio", float(config))
        config = None
    if config is not None:
        if keywords:
            raise ConfigError(f"prunekit.plan: pass either a config or keyword options, not both (got "
                              f"{sorted(keywords)})")
        if isinstance(config, PlanConfig):
            return config
        if isinstance(config, dict):
            return PlanConfig.from_dict(config)
        if isinstance(config, (str, Path)):
            return PlanConfig.load(config)
        raise ConfigError(f"prunekit.plan: config must be a PlanConfig, a dict or a file path, got "
                          f"{type(config).__name__}")
    budget = keywords.get("budget")
    if budget is None:
        budget = Budget(ratio=keywords.get("ratio", 0.5))
    elif not isinstance(budget, Budget):
        raise ConfigError(f"prunekit.plan: budget must be a prunekit.Budget, got {type(budget).__name__}")
    allocator_options = dict(keywords.get("allocator_options") or {})
    constraints = {k: allocator_options.pop(k) for k in ("round_to", "max_ratio", "min_keep_channels")
                   if k in allocator_options}
    for key in ("round_to", "max_ratio"):
        if keywords.get(key) is not None:
            constraints[key] = keywords[key]
    return PlanConfig.from_dict({
        "criterion": {"name": keywords.get("criterion", "l1"), **(keywords.get("criterion_options") or {})},
        "allocator": {"name": keywords.get("allocator", "uniform"), **allocator_options},
        "budget": dataclasses.asdict(budget), "constraints": constraints,
        "allow_inexact": bool(keywords.get("allow_inexact", False)), "ignore": list(keywords.get("ignore", ())),
        "strict": bool(keywords.get("strict", False))})


def apply(model: nn.Module, plan: PruningPlan, inputs: Any = None, forward_fn: Optional[Callable] = None,
          inplace: bool = False, verify: bool = True, tolerance: float = 1e-4,
          analysis: Optional[Analysis] = None, held_out: Any = None, strict: bool = False) -> nn.Module:
    """Physically remove what `plan` says. Checks everything before touching the model; with `verify` (default)
    compares the result with the masked original on every example in `inputs` (one batch or `prunekit.Examples`)
    and on `held_out` inputs, and raises if they differ (a copy is dropped; in place, the model is left pruned).
    Returns the pruned model (a copy unless `inplace`; in place needs no extra memory beyond one module).

    The analysis that made the plan is reused when the plan came from `prunekit.plan` on this same model object;
    otherwise `analysis`, or a new trace (with `strict`)."""
    from .prune.apply import apply_removal
    from .prune.hf_config import rewrite_hf_config

    plan.check_model(model)
    if inputs is None:
        if plan.inputs is None:
            raise ConfigError("apply needs example inputs (the plan does not describe any)")
        inputs = make_inputs(plan.inputs)
    cached = getattr(plan, "_analysis", None)
    if analysis is None and cached is not None and cached.model_id == id(model):
        analysis = cached
    analysis = analysis or analyze(model, inputs, forward_fn=forward_fn, strict=strict)
    sizes = {g.id: g.size for g in analysis.groups}
    for gid, size in plan.group_sizes.items():
        if gid in plan.removed and plan.removed[gid] and sizes.get(gid) != size:
            raise ConfigError(f"group '{gid}' has {sizes.get(gid)} units in this model, the plan expects {size}")
    removed = plan.removed_tensors()
    emb_width = _embedding_width(model)
    target = apply_removal(
        model, analysis.groups, removed, inputs, forward_fn=forward_fn, inplace=inplace, verify=verify,
        tolerance=tolerance, held_out=held_out, called=analysis.called or None, attributes=analysis.attributes,
        finish=lambda t: rewrite_hf_config(t, rms_eps_factor=_hidden_factor(emb_width, t)))
    from .graph.summary import log_summary

    log_summary(analysis.summary(plan.removed), "apply")
    return target


def _input_embeddings(model: nn.Module):
    try:
        return model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    except (NotImplementedError, AttributeError):  # vision models in transformers raise here
        return None


def _embedding_width(model: nn.Module) -> Optional[int]:
    emb = _input_embeddings(model)
    return emb.embedding_dim if isinstance(emb, nn.Embedding) else None


def _hidden_factor(width_before: Optional[int], after: nn.Module) -> float:
    emb1 = _input_embeddings(after)
    if width_before and isinstance(emb1, nn.Embedding):
        return width_before / emb1.embedding_dim
    return 1.0


def verify(original: nn.Module, pruned: nn.Module, plan: PruningPlan, inputs: Any = None,
           forward_fn: Optional[Callable] = None, tolerance: float = 1e-4) -> VerifyReport:
    """Compare a pruned model with the masked original on `inputs` (random ones from the plan if omitted)."""
    inputs = inputs if inputs is not None else make_inputs(plan.inputs, seed=1)
    analysis = analyze(original, inputs, forward_fn=forward_fn)
    return verify_pruning(original, pruned, analysis.groups, plan.removed_tensors(), inputs, forward_fn, tolerance,
                          called=analysis.called or None)


def prune(model: nn.Module, inputs: Any, config: Any = None, **plan_options) -> tuple:
    """plan + apply in one call (arguments as for `plan`): returns (pruned model, plan)."""
    p = plan(model, inputs, config, **plan_options)
    return apply(model, p, inputs, forward_fn=plan_options.get("forward_fn"),
                 strict=bool(plan_options.get("strict", False))), p


from .export.checkpoint import load, save  # noqa: E402,F401  (moved to prunekit.export; re-exported)
