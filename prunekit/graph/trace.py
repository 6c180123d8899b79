"""Trace a model by running it once with real example inputs while channel labels flow alongside.

Every torch function called outside a *leaf* module (one with a registered layer rule) is intercepted by a
`TorchFunctionMode`; its op rule (``graph/ops``) maps input labels to output labels and couples channels. Leaf modules
(conv, linear, norms, attention blocks...) are handled whole by their layer rule (``graph/layers``), which also
records which parameter slices hold which channels. Python control flow is fine: the model really runs.
The user's model is left exactly as it was: modes, grad flags and hooks are restored.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch.overrides import TorchFunctionMode

from ..errors import UnsupportedOperationError
from .attrs import AttrRegistry, find_attr_ints, tagged
from .labels import UnionFind, const_labels
from .sizes import wrap_sizes


@dataclass
class MemberRecord:
    """Positions of ``module.param`` along `dim`, and the channel id each position holds (CONST: none)."""

    module: str
    param: str
    dim: int
    ids: torch.Tensor
    role: str


@dataclass
class TraceState:
    """Everything the rules read and write during one trace."""

    model: torch.nn.Module
    uf: UnionFind = field(default_factory=UnionFind)
    members: List[MemberRecord] = field(default_factory=list)
    labels: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    module_names: Dict[int, str] = field(default_factory=dict)
    param_owner: Dict[int, Tuple[str, str, bool]] = field(default_factory=dict)
    stack: List[str] = field(default_factory=list)
    units: Dict[int, str] = field(default_factory=dict)
    source_tags: Dict[int, Dict[str, Any]] = field(default_factory=dict)
    unknown_ops: List[str] = field(default_factory=list)
    leaf_modules: Dict[str, type] = field(default_factory=dict)
    input_hw: Optional[int] = None
    strict: bool = False
    ran: set = field(default_factory=set)  # names of modules called, or whose tensors an operation read
    called: set = field(default_factory=set)  # names of modules whose forward ran
    # views of parameters (an expert's slice of a 3-D weight, a transposed weight): id -> (tensor, module, name,
    # the parameter dim behind each view dim)
    views: Dict[int, Tuple[torch.Tensor, str, str, Tuple[int, ...]]] = field(default_factory=dict)
    examples: int = 0
    attrs: AttrRegistry = field(default_factory=AttrRegistry)  # sizes read from attributes (`graph.attrs`)

    # --- labels -------------------------------------------------------------------------------------------
    def get(self, x: torch.Tensor) -> torch.Tensor:
        entry = self.labels.get(id(x))
        if entry is not None and entry[0] is x:
            return entry[1]
        owner = self.param_owner.get(id(x))
        if owner is not None:
            return self._label_unwrapped(x, *owner)
        return const_labels(x.dim())

    def set(self, x: Any, labels: torch.Tensor) -> None:
        if isinstance(x, torch.Tensor):
            if labels.dim() != x.dim():
                labels = labels.reshape((1,) * max(0, x.dim() - labels.dim()) + tuple(labels.shape)[-x.dim():]) \
                    if x.dim() else labels.reshape(())
            self.labels[id(x)] = (x, labels)

    def new_channels(self, n: int, unit: str = "channel", tags: Optional[Dict[str, Any]] = None) -> torch.Tensor:
        ids = self.uf.new(n)
        if unit != "channel":
            for i in ids.tolist():
                self.units[i] = unit
        if tags and n:
            self.source_tags[int(ids[0])] = tags
        return ids

    def member(self, module: str, param: str, dim: int, ids: torch.Tensor, role: str) -> None:
        self.members.append(MemberRecord(module, param, dim, ids.reshape(-1).clone(), role))

    def _label_unwrapped(self, x: torch.Tensor, module: str, name: str, is_param: bool) -> torch.Tensor:
        """A parameter used directly by a function (cls token, position embedding, layer scale...)."""
        dims = [d for d in range(x.dim()) if x.shape[d] > 1]
        if not dims:
            labels = const_labels(x.dim())
        else:
            d = dims[-1]
            ids = self.new_channels(x.shape[d])
            shape = [1] * x.dim()
            shape[d] = x.shape[d]
            labels = ids.reshape(shape)
            self.member(module, name, d, ids, "param")
            if not is_param:
                self.uf.pin(ids, f"buffer '{module}.{name}' used directly by an operation")
        self.labels[id(x)] = (x, labels)
        return labels

    # --- context ------------------------------------------------------------------------------------------
    def where(self, op: str = "") -> str:
        mod = self.stack[-1] if self.stack else "<model>"
        return f"operation '{op}' in module '{mod or '<root>'}'" if op else f"module '{mod or '<root>'}'"

    def unknown(self, op: str, tensors: List[torch.Tensor]) -> None:
        """An operation whose channel semantics we do not know: pin every channel it touches."""
        where = self.where(op)
        touched = [self.get(t) for t in tensors]
        if any(bool((lab >= 0).any()) for lab in touched):
            if self.strict:
                raise UnsupportedOperationError(f"unsupported {where}: the engine does not know how it treats channels")
            self.unknown_ops.append(where)
            for lab in touched:
                self.uf.pin(lab, f"unsupported {where}")


class _LabelMode(TorchFunctionMode):
    def __init__(self, state: TraceState, op_rules: Dict[str, Callable]):
        super().__init__()
        self.state = state
        self.op_rules = op_rules
        self.leaf_depth = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.leaf_depth > 0:
            return out
        name = getattr(func, "__name__", str(func))
        if name in ("size", "__get__", "__len__"):
            out = wrap_sizes(name, out)  # sizes read from tensors follow them when channels are removed
        attr_ints = find_attr_ints((args, kwargs))
        if attr_ints:
            self.state.attrs.where = self.state.where(name)
            self.state.attrs.consumed.clear()
        try:
            return self._labelled(func, name, args, kwargs, out)
        finally:
            for v in attr_ints:  # a size from an attribute that no rule understood: that attribute must stay
                if id(v) not in self.state.attrs.consumed:
                    self.state.attrs.freeze(v.poly, f"used by '{name}'")

    def _labelled(self, func, name, args, kwargs, out):
        rule = self.op_rules.get(name)
        if rule is None and name.endswith("_") and not name.startswith("__"):
            rule = self.op_rules.get(name[:-1])  # in-place variants behave like their out-of-place op
        tensors = _tensors(args) + _tensors(kwargs)
        for t in tensors:
            owner = self.state.param_owner.get(id(t))
            if owner is not None:
                self.state.ran.add(owner[0])
        if rule is None and name == "__get__":
            rule = self.op_rules.get("__get__")
        if rule is None:
            # Results without tensors (sizes, flags, numbers) carry no channels.
            if _tensors(out) and any(id(t) in self.state.labels or id(t) in self.state.param_owner for t in tensors):
                self.state.unknown(name, tensors)
            return out
        rule(self.state, func, name, args, kwargs, out)
        return out


def _tensors(obj: Any) -> List[torch.Tensor]:
    found: List[torch.Tensor] = []

    def walk(o):
        if isinstance(o, torch.Tensor):
            found.append(o)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v)
        elif isinstance(o, dict):
            for v in o.values():
                walk(v)

    walk(obj)
    return found


def output_tensors(out: Any) -> List[torch.Tensor]:
    """Every tensor in a model output: tensors, tuples, dicts, dataclasses, Hugging Face ModelOutput."""
    if dataclasses.is_dataclass(out) and not isinstance(out, type) and not isinstance(out, dict):
        out = {f.name: getattr(out, f.name) for f in dataclasses.fields(out)}
    return _tensors(out)


@contextlib.contextmanager
def _preserved(model: torch.nn.Module):
    """Restore modes, grad flags and config flags whatever happens."""
    modes = {m: m.training for m in model.modules()}
    grads = {p: p.requires_grad for p in model.parameters()}
    buffers = [(b, b.detach().clone()) for b in model.buffers() if b is not None]  # train-mode BN updates stats
    config = getattr(model, "config", None)
    use_cache = getattr(config, "use_cache", None) if config is not None else None
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        if use_cache is not None:
            config.use_cache = False
        torch.backends.mha.set_fastpath_enabled(False)
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        if use_cache is not None:
            config.use_cache = use_cache
        for m, mode in modes.items():
            m.training = mode
        for p, flag in grads.items():
            p.requires_grad_(flag)
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)


def call_model(model: torch.nn.Module, inputs: Any, forward_fn: Optional[Callable] = None) -> Any:
    """Run the model on example inputs given as a tensor, tuple, dict, or through a forward function."""
    if forward_fn is not None:
        return forward_fn(model, inputs)
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def run_trace(model: torch.nn.Module, inputs: Any, forward_fn: Optional[Callable] = None, strict: bool = False,
              state: Optional[TraceState] = None) -> TraceState:
    """Trace `model` on `inputs`; returns the labelled state from which groups are built.

    Passing the `state` of an earlier trace adds this trace to it (several example inputs: the groups become the
    union of what every trace saw, see `merge_members`).
    """
    from .layers import find_rule
    from .ops import OP_RULES

    if state is None:
        state = TraceState(model=model, strict=strict)
        for name, module in model.named_modules(remove_duplicate=False):
            state.module_names.setdefault(id(module), name)
        for mod_name, module in model.named_modules():
            for pname, p in module.named_parameters(recurse=False):
                state.param_owner.setdefault(id(p), (mod_name, pname, True))
            for bname, b in module.named_buffers(recurse=False):
                if b is not None:
                    state.param_owner.setdefault(id(b), (mod_name, bname, False))
    state.labels.clear()  # labels of one trace's activations mean nothing in the next
    state.views.clear()
    state.examples += 1
    first = inputs if isinstance(inputs, torch.Tensor) else next(iter(_tensors(inputs)), None)
    if first is not None and first.dim() == 4 and state.input_hw is None:
        state.input_hw = int(first.shape[-1])
    mode = _LabelMode(state, OP_RULES)
    handles = []
    pending: Dict[int, List[Any]] = {}

    def pre_hook(module, args, kwargs):
        name = state.module_names.get(id(module), "?")
        state.stack.append(name)
        state.ran.add(name)
        state.called.add(name)
        rule = find_rule(module)
        if rule is not None and mode.leaf_depth == 0:
            state.leaf_modules[name] = type(module)
            pending.setdefault(id(module), []).append((rule, args, kwargs))
            mode.leaf_depth += 1
        elif rule is not None:
            mode.leaf_depth += 1

    def post_hook(module, args, kwargs, output):
        rule = find_rule(module)
        if rule is not None:
            mode.leaf_depth -= 1
            if mode.leaf_depth == 0 and pending.get(id(module)):
                rule_obj, a, k = pending[id(module)].pop()
                name = state.module_names.get(id(module), "?")
                mode.leaf_depth += 1  # the rule's own tensor work must not be traced
                try:
                    rule_obj.propagate(state, name, module, a, k, output)
                finally:
                    mode.leaf_depth -= 1
        state.stack.pop()

    try:
        for module in model.modules():
            handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
            handles.append(module.register_forward_hook(post_hook, with_kwargs=True))
        with _preserved(model), tagged(model, state.attrs), torch.no_grad(), mode:
            out = call_model(model, inputs, forward_fn)
    finally:
        for h in handles:
            h.remove()
        state.stack.clear()
    for t in output_tensors(out):
        state.uf.pin(state.get(t), "it is part of the model's output")
    state.labels.clear()  # drop references to activations
    state.views.clear()
    state.output = out
    return state


def merge_members(state: TraceState) -> None:
    """Tie together every record of the same tensor slice (a module called twice, or several traces).

    Position p of ``module.param`` along `dim` is one physical slice whatever call recorded it, so the channel ids
    recorded for it are coupled; a position that holds a channel in one record and constant content (the model's
    input, say) in another cannot be removed, so that channel is pinned.
    """
    by_key: Dict[Tuple[str, str, int], List[MemberRecord]] = {}
    for rec in state.members:
        by_key.setdefault((rec.module, rec.param, rec.dim), []).append(rec)
    kept: List[MemberRecord] = []
    for key, recs in by_key.items():
        first = recs[0]
        for other in recs[1:]:
            if other.ids.numel() != first.ids.numel() or other.role != first.role:
                kept.append(other)
                continue
            state.uf.union_pairs(first.ids, other.ids)
            mixed = (first.ids < 0) != (other.ids < 0)
            if mixed.any():
                named = torch.where(first.ids[mixed] >= 0, first.ids[mixed], other.ids[mixed])
                state.uf.pin(named, f"'{key[0]}.{key[1]}' sees these channels in one call and constant content "
                                    f"in another")
                first.ids = torch.where(first.ids >= 0, first.ids, other.ids)
        kept.append(first)
    state.members = kept
