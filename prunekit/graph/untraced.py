"""Modules the trace never ran: their widths are unknown to the engine, so the groups that may reach them are refused.

A module with parameters or buffers that no example input ran (a branch taken for other inputs, a head used only in
training) keeps its widths when the layers around it are narrowed; the pruned model would then crash, or compute
something else, on the inputs that take that branch. The engine cannot see which tensors that module reads, so it
refuses every group that could: a group whose tensors live in the same scope as the module (its parent's subtree)
and have one of the module's widths along the pruned dim.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Sequence, Set, Tuple

import torch
from torch import nn

from .types import ChannelGroup

UNTRACED_REASON = ("module '{module}' ({kind}) did not run on the example inputs and may read or produce these "
                   "channels: pass example inputs that run it (prunekit.Examples([...])), or ignore it if it is "
                   "never used")


def untraced_modules(model: nn.Module, ran: Set[str], leaves: Iterable[str] = ()
                     ) -> Dict[str, Tuple[str, Set[int], str]]:
    """{module name: (type name, widths, scope)} for modules owning tensors that no trace touched (modules inside a
    leaf module that ran count as run: its layer rule handled their tensors).

    Widths are the sizes (> 1) of every dim of the module's own parameters and buffers (a conv's input width is
    its weight's dim 1 times its groups). The scope is the innermost module that ran and contains it: the code that
    would call it lives there.
    """
    out: Dict[str, Tuple[str, Set[int], str]] = {}
    inside = tuple(f"{leaf}." for leaf in leaves if leaf in ran and leaf)
    own = {name: [t for t in list(m._parameters.values()) + list(m._buffers.values()) if isinstance(t, torch.Tensor)]
           for name, m in model.named_modules(remove_duplicate=False)}
    used = {id(t) for name, ts in own.items() if name in ran for t in ts}  # tied tensors of modules that ran
    for name, module in model.named_modules():
        if inside and name.startswith(inside):
            continue
        tensors = own.get(name, [])
        if not tensors or name in ran or all(id(t) in used for t in tensors):
            continue
        widths = {int(s) for t in tensors for s in t.shape if s > 1}
        groups = getattr(module, "groups", 1)
        if isinstance(module, nn.modules.conv._ConvNd) and groups > 1:
            widths.add(module.weight.shape[1] * groups)
        scope = name.rpartition(".")[0]
        while scope and scope not in ran:
            scope = scope.rpartition(".")[0]
        out[name] = (type(module).__name__, widths, scope)
    return out


def _in_scope(member_module: str, scope: str) -> bool:
    return not scope or member_module == scope or member_module.startswith(scope + ".")


def refuse_untraced(groups: Sequence[ChannelGroup], untraced: Dict[str, Tuple[str, Set[int], str]],
                    shapes: Dict[Tuple[str, str], Tuple[int, ...]], ignored: Iterable[str] = ()) -> None:
    """Refuse (in place) every group that may reach an untraced module not listed in `ignored`.

    The group's tags keep which untraced modules refused it (``"untraced"``), so ignoring those modules later
    (`lift_untraced`) gives the group back.
    """
    ignored = set(ignored)
    for name, (kind, widths, scope) in untraced.items():
        if name in ignored:
            continue
        for g in groups:
            if not g.members:
                continue
            hit = any(_in_scope(m.module, scope) and shapes.get((m.module, m.param), ())[m.dim:m.dim + 1]
                      and shapes[(m.module, m.param)][m.dim] in widths for m in g.members)
            if not hit:
                continue
            tagged: List[str] = g.tags.setdefault("untraced", [])
            if not tagged:
                g.tags["prunable_if_traced"] = g.prunable
            tagged.append(name)
            reason = UNTRACED_REASON.format(module=name, kind=kind)
            if g.prunable:
                g.prunable = False
                g.reasons.insert(0, reason)
            elif len(tagged) == 1:
                g.reasons.append(reason)


def lift_untraced(group: ChannelGroup, ignored: Set[str]) -> None:
    """Give back a group refused only because of untraced modules that the user now ignores (in place)."""
    tagged = group.tags.get("untraced")
    if not tagged or not set(tagged) <= ignored:
        return
    group.reasons = [r for r in group.reasons if "did not run on the example inputs" not in r]
    group.prunable = bool(group.tags.get("prunable_if_traced", False))
    group.tags["untraced"] = []
