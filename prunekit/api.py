"""The short public API: plan, apply, verify, prune, save, load.

    plan = prunekit.plan(model, inputs, ratio=0.5, criterion="l1", allocator="uniform")
    pruned = prunekit.apply(model, plan, inputs)          # verified against the masked original
    prunekit.save(pruned, plan, "out/")                    # safetensors + plan.json, no pickle
    again = prunekit.load("out/", model=build_original())  # replays the plan, loads the weights
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Union

import torch
from torch import nn

from .errors import CheckpointError, ConfigError
from .graph import Analysis, analyze
from .graph.types import Budget, ChannelGroup
from .prune.plan import PruningPlan, describe_inputs, make_inputs, model_fingerprint
from .prune.verify import VerifyReport, verify_pruning


def _eligible(groups: Sequence[ChannelGroup], allow_inexact: bool) -> list:
    out = []
    for g in groups:
        g2 = copy.copy(g)
        if g.prunable and not g.exact and not allow_inexact:
            g2.prunable = False
            g2.reasons = list(g.reasons) + ["inexact removal not allowed (pass allow_inexact=True)"]
        out.append(g2)
    return out


def plan(model: nn.Module, inputs: Any, ratio: float = 0.5, criterion: str = "l1", allocator: str = "uniform",
         budget: Optional[Budget] = None, forward_fn: Optional[Callable] = None,
         calibration: Optional[Iterable[Any]] = None, loss_fn: Optional[Callable] = None,
         allow_inexact: bool = False, round_to: Union[int, str, None] = None, max_ratio: Optional[float] = None,
         ignore: Sequence[str] = (), criterion_options: Optional[Dict] = None,
         allocator_options: Optional[Dict] = None, model_spec: Optional[Dict] = None,
         analysis: Optional[Analysis] = None, strict: bool = False) -> PruningPlan:
    """Decide what to remove. The model is not modified.

    Args:
        model: any nn.Module.
        inputs: example inputs (tensor, tuple, dict) used to trace the model.
        ratio: fraction of units removed per group (uniform) or overall (global), in (0, 1).
        criterion: a registered criterion name (``prunekit ls criteria``).
        allocator: a registered allocator name (``prunekit ls allocators``).
        budget: overrides `ratio`: ``Budget(target="macs", keep_fraction=0.5)`` searches the ratio that keeps half
            the MACs (within 2%).
        calibration: batches for criteria that need activations or gradients; `loss_fn(output, batch)` for grads.
        allow_inexact: also prune groups whose removal is valid but not equal to masking (LayerNorm'd channels).
        round_to / max_ratio: constraints applied after the policy; ``round_to="auto"`` rounds kept widths to the
            channel block of the hardware the model is on (16 on AVX-512 CPUs, 8 elsewhere), which is what makes
            fewer MACs run faster.
        ignore: module-name glob patterns left untouched.
        strict: raise on the first operation the engine does not understand instead of refusing its groups.
    """
    from .allocate import ALLOCATORS
    from .allocate.budget import allocate_budget
    from .allocate.hardware import resolve_round_to
    from .allocate.select import select
    from .importance.base import create
    from .importance.collector import collect

    if budget is None:
        budget = Budget(ratio=ratio, ignore=tuple(ignore))
    analysis = analysis or analyze(model, inputs, forward_fn=forward_fn, strict=strict)
    groups = _eligible(analysis.groups, allow_inexact)
    crit = create(criterion, None, **(criterion_options or {}))
    stats = None
    if crit.requires:
        if calibration is None:
            if "activations" in crit.requires and not ({"grads", "fisher"} & set(crit.requires)):
                calibration = [inputs]
            else:
                raise ConfigError(f"criterion '{criterion}' needs {sorted(crit.requires)}: pass calibration batches "
                                  f"(and loss_fn for gradients)")
        stats = collect(model, calibration, crit.requires, loss_fn=loss_fn, groups=groups, forward_fn=forward_fn)
    scores = crit.score(model, [g for g in groups if g.prunable], stats)
    options = dict(allocator_options or {})
    round_to = resolve_round_to(round_to, model)
    if round_to is not None:
        options["round_to"] = round_to
    if max_ratio is not None:
        options["max_ratio"] = max_ratio
    policy = ALLOCATORS.get(allocator)(None, **options)
    cost = None
    if budget.target == "macs":
        cost = _macs_cost(model, groups, scores, inputs, forward_fn)
    result = allocate_budget(policy, groups, scores, budget, cost=cost, model=model)
    removed = select(groups, scores, result.allocation)
    return PruningPlan(
        model_fingerprint=model_fingerprint(model),
        removed={k: [int(i) for i in v.tolist()] for k, v in removed.items()},
        group_sizes={g.id: g.size for g in analysis.groups},
        inputs=describe_inputs(inputs),
        model_spec=dict(model_spec or {}),
        provenance=PruningPlan.provenance_now(criterion=criterion, allocator=allocator, ratio=result.ratio,
                                              budget=budget.target or "ratio", allow_inexact=allow_inexact,
                                              round_to=round_to,
                                              unknown_ops=analysis.unknown_ops[:20]),
    )


def _macs_cost(model, groups, scores, inputs, forward_fn):
    """MACs after an allocation, without rebuilding the model: every conv / linear layer's MACs (measured once)
    scale with the kept fraction of its weight's output and input dims; other MACs (attention products) stay."""
    from .metrics.macs import count_macs

    leaf_macs = _leaf_macs(model, inputs, forward_fn)
    total = count_macs(model, inputs) if forward_fn is None else sum(leaf_macs.values())
    rest = max(0, total - sum(leaf_macs.values()))
    modules = dict(model.named_modules())
    sizes = {name: tuple(modules[name].weight.shape[:2]) for name in leaf_macs}
    by_id = {g.id: g for g in groups}

    def cost(allocation) -> float:
        cut = {}
        for gid, n in allocation.items():
            if n <= 0:
                continue
            for m in by_id[gid].members:
                if m.param == "weight" and m.module in sizes and m.dim in (0, 1):
                    key = (m.module, m.dim)
                    cut[key] = cut.get(key, 0) + n * m.index_map.shape[1]
        value = float(rest)
        for name, macs in leaf_macs.items():
            out_c, in_c = sizes[name]
            f0 = 1 - cut.get((name, 0), 0) / out_c
            f1 = 1 - cut.get((name, 1), 0) / in_c if in_c > 1 else 1.0
            value += macs * max(f0, 0.0) * max(f1, 0.0)
        return value

    return cost


def _leaf_macs(model, inputs, forward_fn):
    """MACs of each conv / linear / GPT-2 Conv1D module in one forward."""
    from torch.utils.flop_counter import FlopCounterMode

    from .graph.trace import call_model

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        call_model(model, inputs, forward_fn)
    counts = counter.get_flop_counts()
    out = {}
    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) or type(m).__name__ == "Conv1D":
            key = name if name else "Global"
            flops = counts.get(key) or counts.get(f"{type(model).__name__}.{name}") or {}
            if flops and isinstance(w, torch.Tensor) and w.dim() >= 2:
                out[name] = int(sum(flops.values())) // 2
    return out


def apply(model: nn.Module, plan: PruningPlan, inputs: Any = None, forward_fn: Optional[Callable] = None,
          inplace: bool = False, verify: bool = True, tolerance: float = 1e-4,
          analysis: Optional[Analysis] = None) -> nn.Module:
    """Physically remove what `plan` says. Checks everything before touching the model; with `verify` (default)
    compares the result with the masked original on `inputs` and raises, leaving the user's model as it was, if
    they differ. Returns the pruned model (a copy unless `inplace`)."""
    from .prune.apply import check_removal, remove_channels
    from .prune.hf_config import rewrite_hf_config

    plan.check_model(model)
    if inputs is None:
        if plan.inputs is None:
            raise ConfigError("apply needs example inputs (the plan does not describe any)")
        inputs = make_inputs(plan.inputs)
    analysis = analysis or analyze(model, inputs, forward_fn=forward_fn)
    sizes = {g.id: g.size for g in analysis.groups}
    for gid, size in plan.group_sizes.items():
        if gid in plan.removed and plan.removed[gid] and sizes.get(gid) != size:
            raise ConfigError(f"group '{gid}' has {sizes.get(gid)} units in this model, the plan expects {size}")
    removed = plan.removed_tensors()
    check_removal(analysis.groups, removed)
    target = model if inplace else copy.deepcopy(model)
    backup = copy.deepcopy(model) if inplace and verify else model
    remove_channels(target, analysis.groups, removed)
    rewrite_hf_config(target, rms_eps_factor=_hidden_factor(model, target))
    if verify:
        report = verify_pruning(backup, target, analysis.groups, removed, inputs, forward_fn, tolerance)
        if not report.passed:
            if inplace:
                model.load_state_dict(backup.state_dict(), strict=False)
            raise ConfigError(
                f"verification failed: pruned outputs differ from the masked original by {report.max_abs_error:.3g} "
                f"(relative {report.relative_error:.3g} > {tolerance}); the model was not changed. Please report this "
                f"model: it means an operation was mis-handled")
        target.prunekit_verification = report
    return target


def _input_embeddings(model: nn.Module):
    try:
        return model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    except (NotImplementedError, AttributeError):  # vision models in transformers raise here
        return None


def _hidden_factor(before: nn.Module, after: nn.Module) -> float:
    emb0, emb1 = _input_embeddings(before), _input_embeddings(after)
    if isinstance(emb0, nn.Embedding) and isinstance(emb1, nn.Embedding):
        return emb0.embedding_dim / emb1.embedding_dim
    return 1.0


def verify(original: nn.Module, pruned: nn.Module, plan: PruningPlan, inputs: Any = None,
           forward_fn: Optional[Callable] = None, tolerance: float = 1e-4) -> VerifyReport:
    """Compare a pruned model with the masked original on `inputs` (random ones from the plan if omitted)."""
    inputs = inputs if inputs is not None else make_inputs(plan.inputs, seed=1)
    analysis = analyze(original, inputs, forward_fn=forward_fn)
    return verify_pruning(original, pruned, analysis.groups, plan.removed_tensors(), inputs, forward_fn, tolerance)


def prune(model: nn.Module, inputs: Any, **plan_options) -> tuple:
    """plan + apply in one call: returns (pruned model, plan)."""
    p = plan(model, inputs, **plan_options)
    return apply(model, p, inputs, forward_fn=plan_options.get("forward_fn")), p


def save(model: nn.Module, plan: PruningPlan, out_dir: str | Path) -> Path:
    """Write ``model.safetensors`` (weights) and ``plan.json`` into `out_dir`, atomically, with no pickle."""
    from safetensors.torch import save_model

    from .io import atomic_write

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan.save(out / "plan.json")
    atomic_write(out / "model.safetensors", lambda tmp: save_model(model, tmp, metadata={"format": "pt"}))
    return out


def load(out_dir: str | Path, model: Optional[nn.Module] = None, forward_fn: Optional[Callable] = None) -> nn.Module:
    """Rebuild a pruned model: build (or take) the original architecture, replay the plan, load the weights."""
    from safetensors.torch import load_model

    out = Path(out_dir)
    plan = PruningPlan.load(out / "plan.json")
    if model is None:
        spec = plan.model_spec
        if "registry" in spec:
            from .models import build

            model = build(spec["registry"], pretrained=False, **spec.get("kwargs", {}))
        elif "factory" in spec:
            import importlib

            mod, _, fn = spec["factory"].partition(":")
            model = getattr(importlib.import_module(mod), fn)(**spec.get("kwargs", {}))
        else:
            raise ConfigError("the plan does not say how to build the original model; pass model=...")
    model.eval()
    pruned = apply(model, plan, forward_fn=forward_fn, inplace=True, verify=False)
    weights = out / "model.safetensors"
    if not weights.exists():
        raise CheckpointError(f"missing weights file {weights}")
    try:
        missing, unexpected = load_model(pruned, str(weights), strict=False)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {weights} (corrupted, or not made from this plan): {exc}") \
            from None
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {weights} does not match the pruned architecture: missing {missing[:8]}, "
                              f"unexpected {unexpected[:8]}")
    return pruned
