"""Tracing and channel dependencies: `analyze(model, inputs)` returns the model's channel groups."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .examples import Examples, as_examples  # noqa: F401  (Examples: public)
from .types import Budget, ChannelGroup, GroupMember, Scores  # noqa: F401


@dataclass
class Analysis:
    """The result of tracing: groups plus what the engine could not handle.

    Attributes:
        groups: every channel group (refused ones keep their reasons).
        unknown_ops: operations the engine does not know (where they ran).
        leaf_modules: modules handled whole by a layer rule, with their types.
        untraced: modules owning parameters or buffers that no example input ran -> their type name.
        shapes: (module, tensor name) -> shape, for every parameter and buffer (sizes for summaries).
        examples: how many example inputs were traced.
        model_id: ``id()`` of the traced model (so `apply` can reuse the analysis of the model a plan was made on).
        called: modules whose forward ran (verification masks their tensors while they run).
        attributes: module and config attributes that sizes in the forward were read from and that follow the
            removed units (`graph.attr_solve.AttrRewrite`); `apply` rewrites them.
    """

    groups: List[ChannelGroup]
    unknown_ops: List[str] = field(default_factory=list)
    leaf_modules: dict = field(default_factory=dict)
    untraced: Dict[str, str] = field(default_factory=dict)
    shapes: Dict[Tuple[str, str], Tuple[int, ...]] = field(default_factory=dict)
    examples: int = 1
    model_id: Optional[int] = None
    called: frozenset = frozenset()
    attributes: list = field(default_factory=list)

    def prunable(self) -> List[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    def refused(self, kind: Optional[str] = None) -> List[ChannelGroup]:
        """Groups that cannot be pruned; `kind` ``"actionable"`` keeps those the user can lift (unsupported
        operation, untraced module, ignore pattern, inexact removal not allowed), ``"structural"`` the others
        (model outputs, buffers used directly such as rotary tables, constant content)."""
        from .summary import group_kind

        if kind not in (None, "actionable", "structural"):
            raise ValueError(f"kind must be None, 'actionable' or 'structural', got {kind!r}")
        out = [g for g in self.groups if not g.prunable]
        return out if kind is None else [g for g in out if group_kind(g) == kind]

    def group(self, gid: str) -> ChannelGroup:
        for g in self.groups:
            if g.id == gid:
                return g
        raise KeyError(gid)

    def with_ignore(self, model: torch.nn.Module, patterns: Sequence[str]) -> "Analysis":
        """A copy whose groups owned by modules matching `patterns` are refused ("ignored: ..."), and whose groups
        refused only for untraced modules the patterns cover are given back. Patterns naming a container cover its
        children; a pattern matching no module raises ConfigError naming the nearest names."""
        import dataclasses

        from .patterns import apply_ignore, resolve

        if not patterns:
            return self
        covered = resolve([n for n, _ in model.named_modules()], list(patterns))
        return dataclasses.replace(self, groups=apply_ignore(self.groups, covered))

    def summary(self, removed: Optional[Dict[str, Sequence[int]]] = None):
        """A `RefusalSummary`: groups pruned (per `removed`), refused by reason, share of parameters refused."""
        from .summary import summarise

        return summarise(self.groups, removed, self.shapes, sorted(self.untraced))


def tensor_shapes(model: torch.nn.Module) -> Dict[Tuple[str, str], Tuple[int, ...]]:
    shapes = {}
    for name, module in model.named_modules():
        for pname, t in list(module._parameters.items()) + list(module._buffers.items()):
            if isinstance(t, torch.Tensor):
                shapes[(name, pname)] = tuple(t.shape)
    return shapes


def analyze(model: torch.nn.Module, inputs: Any, forward_fn: Optional[Callable] = None, strict: bool = False,
            ignore: Sequence[str] = ()) -> Analysis:
    """Trace `model` on example `inputs` into groups.

    Args:
        model: any nn.Module; it is left exactly as it was (modes, buffers such as BatchNorm statistics, hooks).
        inputs: one example input (tensor, tuple of positional args, dict of keyword args), or several as
            ``prunekit.Examples([batch, ...])`` (one per branch of a forward that depends on its input): the groups
            are then the union of what every trace saw.
        forward_fn: ``forward_fn(model, batch)`` runs the model when calling it on the batch does not.
        strict: raise on the first operation the engine does not understand instead of refusing its groups.
        ignore: module-name patterns (see `Analysis.with_ignore`).

    Modules with parameters or buffers that no example ran are listed in ``Analysis.untraced`` and the groups that
    may reach them are refused with that reason (`prunekit.graph.untraced`).
    """
    from .groups import build_groups
    from .trace import merge_members, run_trace
    from .untraced import refuse_untraced, untraced_modules

    state = None
    for batch in as_examples(inputs):
        state = run_trace(model, batch, forward_fn=forward_fn, strict=strict, state=state)
    merge_members(state)
    groups = build_groups(state)
    shapes = tensor_shapes(model)
    missing = untraced_modules(model, state.ran, state.leaf_modules)
    refuse_untraced(groups, missing, shapes)
    from .attr_solve import solve_attributes

    attributes = solve_attributes(state, groups)
    analysis = Analysis(groups=groups, unknown_ops=sorted(set(state.unknown_ops)),
                        leaf_modules=dict(state.leaf_modules), untraced={k: v[0] for k, v in missing.items()},
                        shapes=shapes, examples=state.examples, model_id=id(model),
                        called=frozenset(state.called), attributes=attributes)
    return analysis.with_ignore(model, ignore)
