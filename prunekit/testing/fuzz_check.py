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

import collections
import copy
import re
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
        groups: channel groups the analysis found.
        refused_groups: groups left unpruned because of an operation: the refused ones (but those only refused
            for being the model's output) plus inexact groups, which planning refuses unless ``allow_inexact``.
        output_groups: groups refused only because they are the model's output width (its interface).
        pruned_groups: groups the plan removed units from.
        relative_error: max |pruned - masked| / max |masked| over held-out inputs (None when not compared).
        detail: the error message (refused / crash, or why the check failed).
        reasons: refused groups per refusal reason, with module names and sizes blanked (`reason_kind`).
    """

    outcome: str
    groups: int = 0
    refused_groups: int = 0
    output_groups: int = 0
    pruned_groups: int = 0
    relative_error: Optional[float] = None
    detail: str = ""
    reasons: Dict[str, int] = field(default_factory=dict)


def reason_kind(reason: str) -> str:
    """A refusal reason with its module names and sizes blanked, so that reasons of one kind count together."""
    reason = re.sub(r"\[[^\]]*\]", "[..]", reason)
    reason = re.sub(r" (in |at )?module '[^']*'", "", reason)
    return re.sub(r"(LayerNorm|GroupNorm|BatchNorm\w*|conv|Linear) '[^']*'", r"\1 '..'", reason)


def _only_model_output(group) -> bool:
    return bool(group.reasons) and all(r.startswith("it is part of the model's output") for r in group.reasons)


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
    """Plan, prune (without the engine's own verification) and check one generated model on `held_out` fresh
    random batches [3, 3, 8, 8] per input (rounded up to pairs: a batch and its negation)."""
    model, inputs = build(spec)
    if any(block.kind == "branch" for block in spec.blocks):
        # data-dependent paths: trace one batch per path, as a user must (negated images flip the path taken)
        inputs = prunekit.Examples([inputs, tuple(-x for x in inputs)])
    gen = torch.Generator().manual_seed(spec.seed + 1)
    batches = []
    for _ in range(max(1, held_out // 2)):  # each batch and its negation: both paths of a data-dependent branch
        batch = random_inputs(spec, 3, gen)
        batches += [batch, tuple(-x for x in batch)]
    try:
        analysis = prunekit.analyze(model, inputs)
        outputs = [g for g in analysis.refused() if _only_model_output(g)]
        refused = [g for g in analysis.refused() if not _only_model_output(g)]
        refused += [g for g in analysis.groups if g.prunable and not g.exact]
        result = CaseResult("ok", groups=len(analysis.groups), refused_groups=len(refused),
                            output_groups=len(outputs),
                            reasons=dict(collections.Counter(reason_kind(g.reasons[0]) if g.reasons
                                                             else "inexact" for g in refused)))
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
