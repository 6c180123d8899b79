"""Built-in verification: the pruned model must compute what the original computes with the removed slices zeroed."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from ..graph.trace import call_model, output_tensors
from ..graph.types import ChannelGroup


@dataclass
class VerifyReport:
    """max_abs_error: largest |pruned - masked original|; scale: largest |masked original output|.

    `passed` compares max_abs_error / scale against `tolerance`. `inexact_groups` lists pruned groups whose removal is
    valid but not equal to masking (LayerNorm over the channels): there the comparison is reported, not enforced.
    """

    max_abs_error: float
    scale: float
    tolerance: float
    passed: bool
    inexact_groups: List[str] = field(default_factory=list)

    @property
    def relative_error(self) -> float:
        return self.max_abs_error / max(self.scale, 1e-12)


def masked_copy(model: nn.Module, groups: List[ChannelGroup], removed: Dict[str, torch.Tensor]) -> nn.Module:
    """A copy of the original model with every member slice of the removed units set to zero."""
    masked = copy.deepcopy(model)
    modules = dict(masked.named_modules())
    by_id = {g.id: g for g in groups}
    with torch.no_grad():
        for gid, idx in removed.items():
            idx = torch.as_tensor(idx, dtype=torch.long)
            if idx.numel() == 0:
                continue
            for m in by_id[gid].members:
                t = getattr(modules[m.module], m.param)
                pos = m.positions(idx).to(t.device)
                if m.param == "running_var":
                    t.index_fill_(m.dim, pos, 1.0)
                else:
                    t.index_fill_(m.dim, pos, 0.0)
    return masked


def compare_outputs(a: Any, b: Any) -> tuple:
    ta, tb = output_tensors(a), output_tensors(b)
    if len(ta) != len(tb):
        raise AssertionError(f"the models return different numbers of tensors ({len(ta)} vs {len(tb)})")
    err, scale = 0.0, 0.0
    for x, y in zip(ta, tb):
        if x.shape != y.shape:
            raise AssertionError(f"output shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
        if x.is_floating_point():
            err = max(err, float((x.float() - y.float()).abs().max()) if x.numel() else 0.0)
            scale = max(scale, float(y.float().abs().max()) if y.numel() else 0.0)
        elif not torch.equal(x, y):
            err = float("inf")
    return err, scale


def verify_pruning(original: nn.Module, pruned: nn.Module, groups: List[ChannelGroup], removed: Dict[str, Any],
                   inputs: Any, forward_fn: Optional[Callable] = None, tolerance: float = 1e-4) -> VerifyReport:
    """Compare `pruned` with the masked original on `inputs`, in eval mode, restoring both models' modes."""
    masked = masked_copy(original, groups, removed)
    by_id = {g.id: g for g in groups}
    inexact = [gid for gid, idx in removed.items() if len(idx) and not by_id[gid].exact]
    was = pruned.training
    masked.eval()
    pruned.eval()
    try:
        with torch.no_grad():
            ref = call_model(masked, inputs, forward_fn)
            out = call_model(pruned, inputs, forward_fn)
    finally:
        pruned.train(was)
    err, scale = compare_outputs(out, ref)
    passed = (err / max(scale, 1e-12)) <= tolerance or bool(inexact)
    return VerifyReport(err, scale, tolerance, passed, inexact)
