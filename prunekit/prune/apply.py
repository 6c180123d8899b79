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
    from ..graph.layers import find_rule

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
    done: Dict[int, torch.Tensor] = {}
    keepalive = [getattr(modules[m], p) for key in owners for m, p in owners[key]]  # ids stay unique while we work
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
    del keepalive
    # tied tensors sliced along two dims at once are handled by sequential slicing above (the second slice reads the
    # replaced tensor); now rewrite attributes, leaf modules first, then their leaf ancestors (attention blocks).
    for name in sorted(touched, key=lambda n: -n.count(".")):
        rule = find_rule(modules[name])
        if rule is not None:
            rule.fixup(modules[name], old_shapes[name])
    for name in sorted({a for n in touched for a in _ancestors(n)} - touched, key=lambda n: -n.count(".")):
        rule = find_rule(modules[name]) if name in modules else None
        if rule is not None:
            rule.fixup(modules[name], old_shapes.get(name, {}))


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


def _replace(module: nn.Module, pname: str, old: torch.Tensor, new_data: torch.Tensor, done: Dict[int, torch.Tensor]):
    """Swap a parameter or buffer for its sliced version, keeping ties between modules that shared it."""
    if id(old) in done:
        replacement = done[id(old)]
    elif isinstance(old, nn.Parameter):
        replacement = nn.Parameter(new_data, requires_grad=old.requires_grad)
    else:
        replacement = new_data
    done[id(old)] = replacement
    if pname in module._parameters:
        module._parameters[pname] = replacement
    elif pname in module._buffers:
        module._buffers[pname] = replacement
    else:
        setattr(module, pname, replacement)
