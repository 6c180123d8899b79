"""Turn a trace into channel groups: classes of coupled channel ids, gathered by the tensors they touch.

Each union-find root is one removable unit. Units that touch exactly the same tensor slices in the same way form one
`ChannelGroup`; the work is linear in the number of recorded positions.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, List, Tuple

import torch

from .labels import CONST
from .trace import TraceState
from .types import ChannelGroup, GroupMember


def build_groups(state: TraceState) -> List[ChannelGroup]:
    import gc

    # millions of small lists are created here; the cyclic collector would rescan them over and over
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _build_groups(state)
    finally:
        if enabled:
            gc.enable()


def _build_groups(state: TraceState) -> List[ChannelGroup]:
    uf = state.uf
    # root -> {member index: [positions]}
    owned: Dict[int, Dict[int, List[int]]] = defaultdict(lambda: defaultdict(list))
    first_seen: Dict[int, Tuple[int, int]] = {}
    for mi, rec in enumerate(state.members):
        for pos, cid in enumerate(rec.ids.tolist()):
            if cid == CONST:
                continue
            root = uf.find(cid)
            owned[root][mi].append(pos)
            first_seen.setdefault(root, (mi, pos))
    # Members recorded twice for the same tensor slice (e.g. tied weights seen from two modules) are merged later.
    by_signature: Dict[tuple, List[int]] = defaultdict(list)
    for root, per_member in owned.items():
        signature = (
            tuple(sorted((mi, len(p)) for mi, p in per_member.items())),
            root in uf.pins,
        )
        by_signature[signature].append(root)
    root_unit = {uf.find(cid): u for cid, u in state.units.items()}
    root_tags = {uf.find(start): tags for start, tags in state.source_tags.items()}
    groups: List[ChannelGroup] = []
    used_ids: Dict[str, int] = {}
    state.unit_of = {}  # union-find root -> (group id, unit index): what sizes read from attributes count
    ordered = sorted(by_signature.items(), key=lambda kv: min(first_seen[r] for r in kv[1]))
    for (sig, pinned), roots in ordered:
        roots.sort(key=lambda r: first_seen[r])
        member_indices = [mi for mi, _ in sig]
        members = []
        for mi in member_indices:
            rec = state.members[mi]
            index_map = torch.tensor([owned[r][mi] for r in roots], dtype=torch.long)
            members.append(GroupMember(rec.module, rec.param, rec.dim, index_map, rec.role))
        members = _dedupe(members)
        producers = [m for m in members if m.role == "out"]
        owner = producers[0] if producers else members[0]
        name = owner.module or owner.param  # a parameter of the root module used directly: named after itself
        gid = name if name not in used_ids else f"{name}#{used_ids[name] + 1}"
        used_ids[name] = used_ids.get(name, 0) + 1
        state.unit_of.update({r: (gid, i) for i, r in enumerate(roots)})
        reasons, prunable = [], True
        if pinned:
            prunable = False
            reasons.append(uf.pins[roots[0]] if roots[0] in uf.pins else "pinned")
        elif not producers:
            prunable = False
            reasons.append("no layer produces these channels")
        inexact = [uf.inexact[r] for r in roots if r in uf.inexact]
        unit = root_unit.get(roots[0], "channel")
        tags = dict(root_tags.get(roots[0], {}))
        groups.append(ChannelGroup(
            id=gid, size=len(roots), members=members, unit=unit, prunable=prunable and len(roots) > 0,
            reasons=reasons + ([inexact[0]] if inexact else []), exact=not inexact, tags=tags,
        ))
    return groups


def _dedupe(members: List[GroupMember]) -> List[GroupMember]:
    seen = {}
    out = []
    for m in members:
        key = (m.module, m.param, m.dim)
        if key in seen:
            prev = seen[key]
            if prev.index_map.shape[0] == m.index_map.shape[0]:
                prev.index_map = torch.cat([prev.index_map, m.index_map], 1).unique(dim=1) \
                    if not torch.equal(prev.index_map, m.index_map) else prev.index_map
            continue
        seen[key] = m
        out.append(m)
    return out
