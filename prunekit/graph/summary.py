"""What happened to every group: how many were pruned, which were refused and why, and how much of the model the
refused groups hold. Refusals the user can act on (an unsupported operation, a module the examples never ran, an
ignore pattern, inexact removal not allowed) are told apart from structural ones (model outputs, rotary buffers,
constant content)."""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from .types import ChannelGroup

LOG = logging.getLogger("prunekit")

# Reason prefixes the user can act on, with what to do.
ACTIONABLE = {
    "unsupported": "register an op rule (prunekit.graph.ops.register_op) or a layer rule",
    "module '": "pass example inputs that run it (prunekit.Examples) or ignore it",
    "ignored:": "remove the pattern from ignore",
    "inexact removal not allowed": "pass allow_inexact=True",
}


def refusal_kind(reason: str) -> str:
    """``"actionable"`` when the user can lift the refusal, else ``"structural"``."""
    if reason.startswith("module '") and "did not run on the example inputs" not in reason:
        return "structural"
    return "actionable" if any(reason.startswith(p) for p in ACTIONABLE) else "structural"


def group_kind(group: ChannelGroup) -> str:
    """The kind of a refused group: actionable when any of its reasons is."""
    return "actionable" if any(refusal_kind(r) == "actionable" for r in group.reasons) else "structural"


def _short(reason: str) -> str:
    """A reason with its module names blanked, so refusals of the same kind count together."""
    import re

    return re.sub(r"(module|buffer|LayerNorm|conv) '[^']*'", r"\1 '...'", reason)[:160]


@dataclass
class RefusalSummary:
    """Counts for a log line and a report: groups pruned, refused by reason, share of parameters refused."""

    groups: int
    pruned: int
    refused: int
    by_reason: Dict[str, int] = field(default_factory=dict)
    actionable: int = 0
    refused_param_share: float = 0.0
    untraced: List[str] = field(default_factory=list)

    def text(self) -> str:
        lines = [f"{self.pruned} of {self.groups} groups pruned, {self.refused} refused "
                 f"({self.actionable} you can act on) holding {100 * self.refused_param_share:.1f}% of the "
                 f"parameters"]
        for reason, n in sorted(self.by_reason.items(), key=lambda kv: -kv[1])[:8]:
            lines.append(f"  {n:4d} x {reason}")
        if self.untraced:
            lines.append(f"  modules the example inputs never ran: {', '.join(self.untraced[:8])}")
        return "\n".join(lines)


def summarise(groups: Sequence[ChannelGroup], removed: Optional[Dict[str, Sequence[int]]],
              shapes: Dict[Tuple[str, str], Tuple[int, ...]], untraced: Sequence[str] = ()) -> RefusalSummary:
    """Summarise `groups` (as planned: refusals included) and the plan's `removed` indices."""
    removed = removed or {}
    refused = [g for g in groups if not g.prunable]
    by_reason = Counter(_short(g.reasons[0]) if g.reasons else "no reason" for g in refused)
    total = sum(_numel(s) for s in shapes.values()) or 1
    refused_params = 0.0
    seen = set()
    for g in refused:
        for m in g.members:
            shape = shapes.get((m.module, m.param))
            if not shape or (m.module, m.param, m.dim) in seen:
                continue
            seen.add((m.module, m.param, m.dim))
            refused_params += _numel(shape) * min(1.0, m.index_map.numel() / max(shape[m.dim], 1))
    return RefusalSummary(
        groups=len(groups), pruned=sum(1 for gid, idx in removed.items() if len(idx)), refused=len(refused),
        by_reason=dict(by_reason), actionable=sum(1 for g in refused if group_kind(g) == "actionable"),
        refused_param_share=min(1.0, refused_params / total), untraced=list(untraced))


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def log_summary(summary: RefusalSummary, stage: str) -> None:
    LOG.info("%s: %s", stage, summary.text())
