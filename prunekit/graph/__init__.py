"""Tracing and channel dependencies: `analyze(model, inputs)` returns the model's channel groups."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional

import torch

from .types import Budget, ChannelGroup, GroupMember, Scores  # noqa: F401


@dataclass
class Analysis:
    """The result of tracing: groups plus what the engine could not handle."""

    groups: List[ChannelGroup]
    unknown_ops: List[str] = field(default_factory=list)
    leaf_modules: dict = field(default_factory=dict)

    def prunable(self) -> List[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    def refused(self) -> List[ChannelGroup]:
        return [g for g in self.groups if not g.prunable]

    def group(self, gid: str) -> ChannelGroup:
        for g in self.groups:
            if g.id == gid:
                return g
        raise KeyError(gid)


def analyze(model: torch.nn.Module, inputs: Any, forward_fn: Optional[Callable] = None, strict: bool = False) -> Analysis:
    """Trace `model` on example `inputs` (tensor, tuple, dict, or via `forward_fn(model, inputs)`) into groups."""
    from .groups import build_groups
    from .trace import run_trace

    state = run_trace(model, inputs, forward_fn=forward_fn, strict=strict)
    groups = build_groups(state)
    return Analysis(groups=groups, unknown_ops=sorted(set(state.unknown_ops)), leaf_modules=dict(state.leaf_modules))
