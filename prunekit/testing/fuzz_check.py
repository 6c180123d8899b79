"""Prune one generated model through the public API and judge the result independently of the engine's verifier.

Outcomes:
    ok: pruned (or nothing prunable) and the pruned model equals the masked original on held-out inputs.
    refused: the engine refused the whole model with a named error (`prunekit.errors.PrunekitError`).
    silently_wrong: pruning succeeded but the outputs differ from the masked original.
    crash: any other exception (a bug, whatever the model).

The masked original is computed here, not by `prunekit.prune.verify`: a copy of the original model in which every
removed unit's producer slices (the group members with role ``out``: conv / linear weight rows and bias) and norm
affine slices (role ``norm``: weight and bias; running statistics are left alone) are set to zero. Removing a
channel is correct exactly when the pruned model computes what that copy computes.
"""
from __future__ import annotations

import copy
import traceback
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

import prunekit
from prunekit.errors import PrunekitError

from .fuzz_models import ModelSpec, build, random_inputs

CRITERIA = ("l1", "l2", "fpgm", "random", "bn_scale")
ALLOCATORS = ("uniform", "global")
OUTCOMES = ("ok", "refused", "silently_wrong", "crash")


@dataclass
class CaseResult:
    """What happened to one model.

    Attributes:
        outcome: one of `OUTCOMES`.
        groups / refused_groups: channel groups the analysis found, and how many of them it refused.
        pruned_groups: groups the plan removed units from.
        relative_error: max |pruned - masked| / max |masked| over held-out inputs (None when not compared).
        detail: the error message (refused / crash) or the refused groups' reasons.
    """

    outcome: str
    groups: int = 0
    refused_groups: int = 0
    pruned_groups: int = 0
    relative_error: Optional[float] = None
    detail: str = ""
    reasons: List[str] = field(default_factory=list)


def masked_original(model: nn.Module, groups, removed: Dict[str, List[int]]) -> nn.Module:
    """A copy of `model` with the producer and norm-affine slices of every removed unit zeroed."""
    masked = copy.deepcopy(model)
    modules = dict(masked.named_modules())
    by_id = {g.id: g for g in groups}
    with torch.no_grad():
        for gid, units in removed.items():
            if not units:
                continue
            units_t = torch.tensor(units, dtype=torch.long)
            for member in by_id[gid].members:
                if member.role not in ("out", "norm") or member.param not in ("weight", "bias"):
                    continue
                tensor = getattr(modules[member.module], member.param)
                positions = torch.unique(member.index_map[units_t].reshape(-1))
                tensor.index_fill_(member.dim, positions, 0.0)
    return masked


def relative_error(pruned: nn.Module, reference: nn.Module, batches: List[Tuple[torch.Tensor, ...]]) -> float:
    """Largest max|pruned - reference| / max|reference| over the batches."""
    worst = 0.0
    with torch.no_grad():
        for inputs in batches:
            ref, out = reference(*inputs), pruned(*inputs)
            if out.shape != ref.shape:
                return float("inf")
            worst = max(worst, float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12)))
    return worst


def run_case(spec: ModelSpec, ratio: float, criterion: str, allocator: str, tolerance: float = 1e-4,
             held_out: int = 2) -> CaseResult:
    """Plan, prune (without the engine's own verification) and check one generated model."""
    model, inputs = build(spec)
    gen = torch.Generator().manual_seed(spec.seed + 1)
    batches = [random_inputs(spec, 3, gen) for _ in range(held_out)]
    try:
        analysis = prunekit.analyze(model, inputs)
        refused = analysis.refused()
        result = CaseResult("ok", groups=len(analysis.groups), refused_groups=len(refused),
                            reasons=sorted({r for g in refused for r in g.reasons}))
        plan = prunekit.plan(model, inputs, ratio=ratio, criterion=criterion, allocator=allocator)
        pruned = prunekit.apply(model, plan, inputs, verify=False)
    except PrunekitError as exc:
        return CaseResult("refused", detail=f"{type(exc).__name__}: {exc}")
    except Exception:  # noqa: BLE001 -- every other exception is a finding, recorded whole
        return CaseResult("crash", detail=traceback.format_exc(limit=6))
    removed = {gid: units for gid, units in plan.removed.items() if units}
    result.pruned_groups = len(removed)
    try:
        reference = masked_original(model, analysis.groups, removed)
        result.relative_error = relative_error(pruned, reference, batches)
    except Exception:  # noqa: BLE001
        return CaseResult("crash", groups=result.groups, refused_groups=result.refused_groups,
                          detail=traceback.format_exc(limit=6))
    if not result.relative_error <= tolerance:
        result.outcome = "silently_wrong"
        result.detail = f"relative error {result.relative_error:.3g} > {tolerance}; removed {removed}"
    return result
