"""Physical removal: slice every member tensor of each group, then let layer rules rewrite module attributes."""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, List, Tuple

import torch
from torch import nn

from ..errors import ConfigError
from ..graph.types import ChannelGroup


def check_removal(groups: List[ChannelGroup], removed: Dict[str, torch.Tensor]) -> None:
    """Refuse a removal that is not legal, before touching the model."""
    by_id = {g.id: g for g in groups}
    for gid, idx in removed.items():
        if gid not in by_id:
            raise ConfigError(f"the plan names group '{gid}', which this model does not have "
                              f"(the plan was made for another model or another version of it)")
        g = by_id[gid]
        idx = torch.as_tensor(idx, dtype=torch.long)
        if idx.numel() == 0:
            continue
        if not g.prunable:
            raise ConfigError(f"group '{gid}' cannot be pruned: {'; '.join(g.reasons)}")
        if int(idx.min()) < 0 or int(idx.max()) >= g.size:
            raise ConfigError(f"group '{gid}' has {g.size} {g.unit}s; indices out of range in the plan")
        if torch.unique(idx).numel() >= g.size:
            raise ConfigError(f"the plan removes every {g.unit} of group '{gid}'")


def remove_channels(model: nn.Module, groups: List[ChannelGroup], removed: Dict[str, torch.Tensor]) -> None:
    """Remove `removed[group_id]` units of each group from `model`, in place (call `check_removal` first)."""
    by_id = {g.id: g for g in groups}
    modules = dict(model.named_modules())
    # Gather positions per tensor object, so tied weights are sliced once.
    cuts: Dict[Tuple[int, int], set] = defaultdict(set)
    owners: Dict[Tuple[int, int], List[Tuple[str, str]]] = defaultdict(list)
    for gid, idx in removed.items():
        idx = torch.as_tensor(idx, dtype=torch.long)
        if idx.numel() == 0:
            continue
        for member in by_id[gid].members:
            tensor = _tensor(modules, member.module, member.param)
            key = (id(tensor), member.dim)
            cuts[key].update(member.positions(idx).tolist())
            owners[key].append((member.module, member.param))
    old_shapes: Dict[str, Dict[str, tuple]] = defaultdict(dict)
    touched = set()
    done: Dict[int, tuple] = {}
    for (tid, dim), positions in cuts.items():
        for mod_name, pname in owners[(tid, dim)]:
            module = modules[mod_name]
            current = getattr(module, pname)
            old_shapes[mod_name].setdefault(pname, tuple(current.shape))
            if isinstance(module, nn.GroupNorm):
                old_shapes[mod_name].setdefault("__num_channels__", module.num_channels)
            touched.add(mod_name)
        first_mod, first_param = owners[(tid, dim)][0]
        tensor = getattr(modules[first_mod], first_param)
        keep = torch.tensor(sorted(set(range(tensor.shape[dim])) - positions), dtype=torch.long,
                            device=tensor.device)
        new_data = tensor.data.index_select(dim, keep).clone()
        for mod_name, pname in owners[(tid, dim)]:
            _replace(modules[mod_name], pname, getattr(modules[mod_name], pname), new_data, done)
    # tied tensors sliced along two dims at once are handled by sequential slicing above (the second slice reads the
    # replaced tensor); now rewrite attributes.
    fix_attributes(model, touched, old_shapes)


def fix_attributes(model: nn.Module, touched, old_shapes: Dict[str, Dict[str, tuple]]) -> None:
    """Let layer rules rewrite module attributes after slicing: leaf modules first, then their leaf ancestors
    (attention blocks)."""
    from ..graph.layers import find_rule

    modules = dict(model.named_modules())
    for name in sorted(touched, key=lambda n: -n.count(".")):
        rule = find_rule(modules[name])
        if rule is not None:
            rule.fixup(modules[name], old_shapes[name])
        else:
            rewrite_width_attributes(modules[name], old_shapes[name])
    for name in sorted({a for n in touched for a in _ancestors(n)} - touched, key=lambda n: -n.count(".")):
        rule = find_rule(modules[name]) if name in modules else None
        if rule is not None:
            rule.fixup(modules[name], old_shapes.get(name, {}))


def rewrite_width_attributes(module: nn.Module, old_shapes: Dict[str, tuple]) -> None:
    """A module without a layer rule whose own tensors were sliced (experts stored as 3-D parameters, a router
    weight used through ``F.linear``): integer attributes equal to a width that changed (``hidden_dim = 64``) are
    set to the new width, since its forward reshapes with them. A width that changed to two different values is
    left alone (verification then reports the mismatch)."""
    changes: Dict[int, set] = defaultdict(set)
    for pname, old in old_shapes.items():
        t = getattr(module, pname, None)
        if not isinstance(t, torch.Tensor) or pname.startswith("__"):
            continue
        for before, after in zip(old, t.shape):
            if before != after:
                changes[int(before)].add(int(after))
    for attr, value in list(vars(module).items()):
        if attr.startswith("_") or type(value) is not int or len(changes.get(value, ())) != 1:
            continue
        setattr(module, attr, next(iter(changes[value])))


def _ancestors(name: str):
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _tensor(modules, module: str, param: str) -> torch.Tensor:
    if module not in modules:
        raise ConfigError(f"module '{module}' named by the plan does not exist in this model")
    t = getattr(modules[module], param, None)
    if not isinstance(t, torch.Tensor):
        raise ConfigError(f"module '{module}' has no tensor '{param}'")
    return t


def _replace(module: nn.Module, pname: str, old: torch.Tensor, new_data: torch.Tensor, done: Dict[int, tuple]):
    """Swap a parameter or buffer for its sliced version, keeping ties between modules that shared it."""
    import weakref

    seen = done.get(id(old))
    if seen is not None and seen[0]() is old:  # a tensor tied between modules: replaced once, tie kept
        replacement = seen[1]
    elif isinstance(old, nn.Parameter):
        replacement = nn.Parameter(new_data, requires_grad=old.requires_grad)
    else:
        replacement = new_data
    # a weak reference: the old tensor is freed as soon as no module holds it (in-place pruning of a large model
    # then needs one tensor's worth of extra memory), and a recycled id is never mistaken for it
    done[id(old)] = (weakref.ref(old), replacement)
    if pname in module._parameters:
        module._parameters[pname] = replacement
    elif pname in module._buffers:
        module._buffers[pname] = replacement
    else:
        setattr(module, pname, replacement)


def pruned_copy(model: nn.Module, groups: List[ChannelGroup], removed: Dict[str, torch.Tensor]) -> nn.Module:
    """A pruned copy of `model` built without copying the tensors that lose positions first: each is sliced
    straight from the original, so the extra memory is the pruned model's size (call `check_removal` first)."""
    import copy

    from .verify import removed_positions

    cuts = removed_positions(model, groups, removed)
    memo: Dict[int, object] = {}
    for tid, (t, dims) in cuts.items():
        data = t.detach()
        for d in sorted(dims):
            keep = torch.ones(data.shape[d], dtype=torch.bool)
            keep[dims[d]] = False
            data = data.index_select(d, keep.nonzero().flatten().to(data.device))
        memo[tid] = nn.Parameter(data, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else data
    old_shapes: Dict[str, Dict[str, tuple]] = defaultdict(dict)
    touched = set()
    for name, module in model.named_modules():
        for pname, t in list(module._parameters.items()) + list(module._buffers.items()):
            if isinstance(t, torch.Tensor) and id(t) in cuts:
                old_shapes[name][pname] = tuple(t.shape)
                touched.add(name)
        if name in touched and isinstance(module, nn.GroupNorm):
            old_shapes[name]["__num_channels__"] = module.num_channels
    target = copy.deepcopy(model, memo)
    fix_attributes(target, touched, old_shapes)
    return target


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def apply_removal(model: nn.Module, groups: List[ChannelGroup], removed: Dict[str, torch.Tensor], inputs, *,
                  forward_fn=None, inplace: bool = False, verify: bool = True, tolerance: float = 1e-4,
                  held_out=None, called=None, finish=None, attributes=()) -> nn.Module:
    """Remove `removed` units and check the result.

    The reference outputs (the masked original on every example and held-out input) are computed first, on the
    original itself (`verify.masked_reference`: one module's masked tensors at a time), then the model is pruned:
    in place (no copy at all) when `inplace`, else into `pruned_copy` (extra memory = the pruned size). Peak memory
    is therefore the model plus the pruned model (or the model alone in place) plus one module's tensors.

    Args:
        finish: ``finish(pruned)`` after slicing and before checking (rewrite configs, say).
        attributes: `graph.attr_solve.AttrRewrite` s (``Analysis.attributes``): module and config attributes the
            forward reads sizes from, set to their values for this removal after slicing.

    Raises:
        ConfigError: the plan is not legal for these groups (nothing touched), or verification failed. A copy is
            dropped then; in place, the model is left pruned (its removed slices are gone) and the error says so.
    """
    from .verify import check_outputs, reference_outputs
    from ..graph.examples import as_examples

    from .attributes import check_ties, rewrite_attributes, rewrite_head_counts

    check_removal(groups, removed)
    check_ties(groups, removed)
    batches = as_examples(inputs) + (as_examples(held_out) if held_out is not None else [])
    refs = reference_outputs(model, groups, removed, batches, forward_fn, called) if verify else None
    if inplace:
        remove_channels(model, groups, removed)
        target = model
    else:
        target = pruned_copy(model, groups, removed)
    done = rewrite_attributes(target, attributes, removed) if attributes else {}
    rewrite_head_counts(target, groups, removed, skip=[rw.key for rw in attributes] + list(done))
    if finish is not None:
        finish(target)
    if verify:
        by_id = {g.id: g for g in groups}
        inexact = [gid for gid, idx in removed.items() if len(idx) and not by_id[gid].exact]
        report = check_outputs(target, refs, batches, forward_fn, tolerance, inexact)
        report.peak_rss_bytes = peak_rss_bytes()
        if not report.passed:
            state = "it was pruned in place and is left pruned" if inplace else "the model was not changed"
            raise ConfigError(
                f"verification failed: pruned outputs differ from the masked original by {report.max_abs_error:.3g} "
                f"(relative errors per input {[f'{e:.3g}' for e in report.errors]}, tolerance {tolerance}); "
                f"{state}. Please report this model: it means an operation was mis-handled")
        target.prunekit_verification = report
    return target
