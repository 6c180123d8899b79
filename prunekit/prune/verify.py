"""Built-in verification: the pruned model must compute what the original computes with the removed slices zeroed.

The reference is the original model itself, run with hooks, never a copy: while each module runs, its own tensors
that lose positions are swapped for masked clones (removed positions zero, running variances one) and swapped back
when it returns, so the extra memory is one module's tensors at a time. Tensors used by a module that never runs
(read directly by its parent) stay masked for the whole run. Where a plan prunes channels that a LayerNorm
normalises (an inexact group), the reference is what physical removal does: that norm computes its statistics over
the kept channels only. Every pruned model is checked to the same tolerance, on every example input and on held-out
inputs when given.
"""
from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..graph.examples import as_examples
from ..graph.trace import call_model, output_tensors
from ..graph.types import ChannelGroup


@dataclass
class VerifyReport:
    """max_abs_error: largest |pruned - reference| over every checked input; scale: largest |reference output|.

    `passed` compares max_abs_error / scale (per input) against `tolerance`. `inexact_groups` lists pruned groups
    whose reference renormalises a LayerNorm over the kept channels; `errors` holds the relative error per input
    (the example inputs first, then the held-out ones).
    """

    max_abs_error: float
    scale: float
    tolerance: float
    passed: bool
    inexact_groups: List[str] = field(default_factory=list)
    errors: List[float] = field(default_factory=list)
    inputs_checked: int = 1
    peak_rss_bytes: Optional[int] = None

    @property
    def relative_error(self) -> float:
        return max(self.errors) if self.errors else self.max_abs_error / max(self.scale, 1e-12)


def removed_positions(model: nn.Module, groups: Sequence[ChannelGroup], removed: Dict[str, Any]
                      ) -> Dict[int, Tuple[torch.Tensor, Dict[int, torch.Tensor]]]:
    """{id(tensor): (tensor, {dim: removed positions})} over every member tensor of the removed units."""
    modules = dict(model.named_modules())
    by_id = {g.id: g for g in groups}
    cuts: Dict[int, Tuple[torch.Tensor, Dict[int, set]]] = {}
    for gid, idx in removed.items():
        idx = torch.as_tensor(idx, dtype=torch.long)
        if idx.numel() == 0:
            continue
        for m in by_id[gid].members:
            t = getattr(modules[m.module], m.param)
            entry = cuts.setdefault(id(t), (t, defaultdict(set)))
            entry[1][m.dim].update(m.positions(idx).tolist())
    return {k: (t, {d: torch.tensor(sorted(p), dtype=torch.long) for d, p in dims.items()})
            for k, (t, dims) in cuts.items()}


def _masked(t: torch.Tensor, dims: Dict[int, torch.Tensor], name: str) -> torch.Tensor:
    out = t.detach().clone()
    for d, pos in dims.items():
        out.index_fill_(d, pos.to(t.device), 1.0 if name == "running_var" else 0.0)
    return nn.Parameter(out, requires_grad=False) if isinstance(t, nn.Parameter) else out


@contextlib.contextmanager
def masked_reference(model: nn.Module, groups: Sequence[ChannelGroup], removed: Dict[str, Any],
                     called: Optional[Sequence[str]] = None):
    """Within the block, running `model` computes the masked (and, for inexact groups, renormalised) original.

    Args:
        called: modules whose forward runs (from the analysis); tensors of other modules are masked for the whole
            block. None: every module owning a cut tensor is assumed to run.
    """
    from ..graph.layers import find_rule

    cuts = removed_positions(model, groups, removed)
    slots: Dict[str, List[Tuple[str, str, torch.Tensor]]] = defaultdict(list)  # module -> (kind, name, tensor)
    for name, module in model.named_modules(remove_duplicate=False):
        for kind, store in (("p", module._parameters), ("b", module._buffers)):
            for pname, t in store.items():
                if isinstance(t, torch.Tensor) and id(t) in cuts:
                    slots[name].append((kind, pname, t))
    modules = dict(model.named_modules(remove_duplicate=False))
    always = [n for n in slots if called is not None and n not in called]
    handles = []
    swapped: List[Tuple[nn.Module, str, str, torch.Tensor]] = []

    def swap_in(name: str) -> None:
        module = modules[name]
        for kind, pname, t in slots[name]:
            store = module._parameters if kind == "p" else module._buffers
            store[pname] = _masked(t, cuts[id(t)][1], pname)
            swapped.append((module, kind, pname, t))

    def swap_out(name: str) -> None:
        module = modules[name]
        for kind, pname, t in slots[name]:
            (module._parameters if kind == "p" else module._buffers)[pname] = t

    def pre(name):
        return lambda m, args: swap_in(name)

    def post(name):
        return lambda m, args, out: swap_out(name)

    for name in slots:
        if name not in always:
            handles.append(modules[name].register_forward_pre_hook(pre(name)))
            handles.append(modules[name].register_forward_hook(post(name)))
    by_id = {g.id: g for g in groups}
    inexact = [gid for gid, idx in removed.items() if len(idx) and not by_id[gid].exact]
    norm_cuts: Dict[str, set] = defaultdict(set)
    for gid in inexact:
        for m in by_id[gid].members:
            if m.role == "norm" and hasattr(find_rule(modules[m.module]), "kept_forward"):
                norm_cuts[m.module].update(m.positions(torch.as_tensor(removed[gid])).tolist())
    for name, cut in norm_cuts.items():
        module = modules[name]
        size = module.weight.shape[0] if getattr(module, "weight", None) is not None else module.normalized_shape[0]
        keep = torch.tensor(sorted(set(range(size)) - cut), dtype=torch.long)
        rule = find_rule(module)

        def renorm(m, args, out, rule=rule, keep=keep):
            return rule.kept_forward(m, args[0], keep.to(args[0].device))

        handles.append(module.register_forward_hook(renorm))
    try:
        for name in always:
            swap_in(name)
        yield
    finally:
        for h in handles:
            h.remove()
        for module, kind, pname, t in swapped:
            (module._parameters if kind == "p" else module._buffers)[pname] = t


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


@contextlib.contextmanager
def _eval(model: nn.Module):
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def reference_outputs(original: nn.Module, groups: Sequence[ChannelGroup], removed: Dict[str, Any],
                      batches: Sequence[Any], forward_fn: Optional[Callable] = None,
                      called: Optional[Sequence[str]] = None) -> List[List[torch.Tensor]]:
    """The masked original's output tensors on each batch (eval mode; the model is left as it was)."""
    outs = []
    with _eval(original), torch.no_grad(), masked_reference(original, groups, removed, called):
        for batch in batches:
            outs.append([t.detach().clone() for t in output_tensors(call_model(original, batch, forward_fn))])
    return outs


def check_outputs(pruned: nn.Module, references: Sequence[List[torch.Tensor]], batches: Sequence[Any],
                  forward_fn: Optional[Callable], tolerance: float, inexact: List[str]) -> VerifyReport:
    """Run `pruned` on each batch (eval mode) and compare with the references."""
    errors, worst, scale_all = [], 0.0, 0.0
    with _eval(pruned), torch.no_grad():
        for ref, batch in zip(references, batches):
            err, scale = compare_outputs(call_model(pruned, batch, forward_fn), ref)
            errors.append(err / max(scale, 1e-12))
            worst, scale_all = max(worst, err), max(scale_all, scale)
    passed = all(e <= tolerance for e in errors)
    return VerifyReport(worst, scale_all, tolerance, passed, inexact, errors, len(batches))


def verify_pruning(original: nn.Module, pruned: nn.Module, groups: List[ChannelGroup], removed: Dict[str, Any],
                   inputs: Any, forward_fn: Optional[Callable] = None, tolerance: float = 1e-4,
                   held_out: Any = None, called: Optional[Sequence[str]] = None) -> VerifyReport:
    """Compare `pruned` with the masked original on every example in `inputs` (one batch or `Examples`) and in
    `held_out`, in eval mode, restoring both models' modes."""
    batches = as_examples(inputs) + (as_examples(held_out) if held_out is not None else [])
    refs = reference_outputs(original, groups, removed, batches, forward_fn, called)
    by_id = {g.id: g for g in groups}
    inexact = [gid for gid, idx in removed.items() if len(idx) and not by_id[gid].exact]
    return check_outputs(pruned, refs, batches, forward_fn, tolerance, inexact)

