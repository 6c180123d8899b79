"""Sizes read from module and config attributes during a trace, so the engine can rewrite those attributes.

Phi-3 slices its fused ``qkv_proj`` at ``self.config.num_attention_heads * self.head_dim``; Falcon reshapes it with
``view(b, t, self.num_heads, 3, self.head_dim)``. Such sizes are constants of the code unless the attributes they
come from change with the pruned width. While tracing, every integer attribute of a module (and of a config object a
module holds) reads as an `AttrInt`: an int that also carries the polynomial over attributes it equals
(``num_attention_heads * head_dim``). Arithmetic keeps the polynomial where it stays exact (``+ - *``, ``//`` by a
divisor of every coefficient; an exact ratio of attributes, ``num_heads // num_kv_heads``, stays a constant and
records that the two change together); any other use of the value (a comparison, ``/``, mixing with a size read from a
tensor, a torch call that is not a reshape or a slice) *freezes* its attributes: they must keep their values.
Comparisons do not freeze (the engine's own rules compare sizes); a branch taken on an attribute's value is caught
by verification, which runs the pruned model.

The reshape and slice rules record equations ``polynomial == positions kept along a labelled dim`` (`record`);
`prunekit.graph.attr_solve` solves them for the attributes after pruning, or refuses the groups involved.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch

Poly = Dict[Tuple[str, ...], Fraction]  # monomial (sorted attribute keys, repeated for powers) -> coefficient

_ACTIVE: List["AttrRegistry"] = []


@dataclass
class Equation:
    """``poly(attributes) == number of kept positions among ids`` (CONST ids: content that always stays)."""

    poly: Poly
    ids: torch.Tensor
    where: str


@dataclass
class AttrRegistry:
    """The tagged attributes of one model and what the trace learned about them.

    Attributes:
        owners: attribute key -> (owner path, attribute name, value before pruning). The owner path is a module's
            qualified name, or ``"<module>.<attr>"`` for a config object a module holds (shared objects once).
        frozen: attribute key -> the use that forbids changing it.
        equations: what the reshape and slice rules recorded.
    """

    owners: Dict[str, Tuple[str, str, int]] = field(default_factory=dict)
    frozen: Dict[str, str] = field(default_factory=dict)
    equations: List[Equation] = field(default_factory=list)
    consumed: set = field(default_factory=set)  # ids of AttrInts a rule handled in the current torch call
    where: str = ""

    def freeze(self, poly: Poly, why: str) -> None:
        for mono in poly:
            for key in mono:
                self.frozen.setdefault(key, f"{why} (after {self.where or 'the forward'})")


class AttrInt(int):
    """An int read from an attribute (or computed exactly from such ints); `poly` says from which."""

    poly: Poly

    def __new__(cls, value: int, poly: Poly):
        obj = int.__new__(cls, value)
        obj.poly = poly
        return obj

    def __reduce__(self):  # copies and pickles are plain ints
        return (int, (int(self),))

    def __deepcopy__(self, memo):
        return int(self)

    def __copy__(self):
        return int(self)


def _const(v: int) -> Poly:
    return {(): Fraction(int(v))} if v else {}


def _add(a: Poly, b: Poly, sign: int = 1) -> Poly:
    out = dict(a)
    for m, c in b.items():
        out[m] = out.get(m, Fraction(0)) + sign * c
        if out[m] == 0:
            del out[m]
    return out


def _mul(a: Poly, b: Poly) -> Poly:
    out: Poly = {}
    for ma, ca in a.items():
        for mb, cb in b.items():
            m = tuple(sorted(ma + mb))
            out[m] = out.get(m, Fraction(0)) + ca * cb
            if out[m] == 0:
                del out[m]
    return out


def _freeze(*values: Any, why: str) -> None:
    if _ACTIVE:
        for v in values:
            if isinstance(v, AttrInt):
                _ACTIVE[-1].freeze(v.poly, why)


def _operand(other: Any) -> Optional[Poly]:
    """The polynomial of a plain int or AttrInt operand; None for anything else (sizes read from tensors, floats)."""
    from .sizes import ShapeInt

    if isinstance(other, AttrInt):
        return other.poly
    if isinstance(other, ShapeInt) or not isinstance(other, int):
        return None
    return _const(int(other))


def _arith(op: str, combine):
    def method(self, other):
        value = getattr(int, op)(int(self), int(other) if isinstance(other, int) else other)
        poly = _operand(other)
        if value is NotImplemented or poly is None or type(value) is not int or not _ACTIVE:
            _freeze(self, other, why=f"'{op.strip('_')}' with a value that is not an attribute size")
            return _follow(value, other)
        return AttrInt(value, combine(self.poly, poly))

    method.__name__ = op
    return method


def _follow(value: Any, other: Any) -> Any:
    """Mixed with a size read from a tensor, the result follows the tensor as before (the attribute is frozen)."""
    from .sizes import ShapeInt

    return ShapeInt(value) if isinstance(other, ShapeInt) and type(value) is int else value


def _floordiv(self, other):
    value = int.__floordiv__(int(self), int(other)) if isinstance(other, int) else NotImplemented
    if isinstance(other, AttrInt) and int(other) and int(self) % int(other) == 0 and _ACTIVE:
        # a ratio of attributes (query heads per key-value head): it stays a constant of the code, so the
        # attributes may only change together, in that ratio
        reg = _ACTIVE[-1]
        reg.equations.append(Equation(_add(self.poly, _mul(other.poly, _const(value)), -1),
                                      torch.empty(0, dtype=torch.long), f"the ratio {value} at {reg.where}"))
        return AttrInt(value, _const(value))
    if isinstance(other, int) and not isinstance(other, AttrInt) and _operand(other) is not None and other and \
            _ACTIVE and all((c / int(other)).denominator == 1 for c in self.poly.values()):
        return AttrInt(value, {m: c / int(other) for m, c in self.poly.items()})
    _freeze(self, other, why="'//' that does not divide exactly")
    if value is NotImplemented:
        return int(self) // other
    return _follow(value, other)


def _frozen_method(op: str):
    def method(self, *args):
        _freeze(self, *args, why=f"'{op.strip('_')}'")
        return getattr(int, op)(int(self), *[int(a) if isinstance(a, AttrInt) else a for a in args])

    method.__name__ = op
    return method


AttrInt.__add__ = _arith("__add__", lambda a, b: _add(a, b))
AttrInt.__radd__ = _arith("__radd__", lambda a, b: _add(b, a))
AttrInt.__sub__ = _arith("__sub__", lambda a, b: _add(a, b, -1))
AttrInt.__rsub__ = _arith("__rsub__", lambda a, b: _add(b, a, -1))
AttrInt.__mul__ = _arith("__mul__", _mul)
AttrInt.__rmul__ = _arith("__rmul__", lambda a, b: _mul(b, a))
AttrInt.__floordiv__ = _floordiv
AttrInt.__neg__ = lambda self: AttrInt(-int(self), {m: -c for m, c in self.poly.items()}) if _ACTIVE else -int(self)
AttrInt.__pos__ = lambda self: self
for _op in ("__rfloordiv__", "__mod__", "__rmod__", "__truediv__", "__rtruediv__", "__pow__", "__rpow__",
            "__float__", "__divmod__", "__rdivmod__", "__lshift__",
            "__rshift__", "__and__", "__or__", "__xor__"):
    setattr(AttrInt, _op, _frozen_method(_op))
AttrInt.__hash__ = int.__hash__


def symbols(value: Any) -> bool:
    """True for an AttrInt that depends on at least one attribute."""
    return isinstance(value, AttrInt) and any(m for m in value.poly)


def find_attr_ints(obj: Any) -> List[AttrInt]:
    """AttrInts in a call's arguments (tuples, lists, dicts, slices, sizes)."""
    found: List[AttrInt] = []

    def walk(o, depth=0):
        if depth > 4:
            return
        if isinstance(o, AttrInt):
            found.append(o)
        elif isinstance(o, (list, tuple, torch.Size)):
            for v in o:
                walk(v, depth + 1)
        elif isinstance(o, dict):
            for v in o.values():
                walk(v, depth + 1)
        elif isinstance(o, slice):
            for v in (o.start, o.stop, o.step):
                walk(v, depth + 1)

    walk(obj)
    return found


def record(state, value: Any, ids: torch.Tensor, where: str) -> None:
    """Record ``value == kept positions among ids`` for an AttrInt size a rule understood (others: nothing)."""
    reg = getattr(state, "attrs", None)
    if reg is None or not isinstance(value, AttrInt):
        return
    reg.consumed.add(id(value))
    if symbols(value):
        reg.equations.append(Equation(dict(value.poly), ids.reshape(-1).clone(), where))


def _is_config(v: Any) -> bool:
    return hasattr(v, "to_dict") and hasattr(v, "__dict__") and not isinstance(v, (torch.nn.Module, type))


@contextlib.contextmanager
def tagged(model: torch.nn.Module, registry: AttrRegistry) -> Iterator[AttrRegistry]:
    """Make the integer attributes of every module (and of the config objects modules hold) AttrInts while inside;
    restore the plain ints afterwards (values a forward assigned meanwhile are left as assigned, made plain)."""
    swapped: List[Tuple[dict, str, AttrInt, int]] = []
    seen_objects: Dict[int, str] = {}

    def tag(obj: Any, path: str) -> None:
        if id(obj) in seen_objects:
            return
        seen_objects[id(obj)] = path
        d = vars(obj)
        for k, v in list(d.items()):
            if type(v) is not int or k.startswith("_"):
                continue
            key = f"{path}.{k}" if path else k
            registry.owners.setdefault(key, (path, k, v))
            tagged_value = AttrInt(v, {(key,): Fraction(1)})
            d[k] = tagged_value
            swapped.append((d, k, tagged_value, v))

    for name, module in model.named_modules():
        tag(module, name)
    for name, module in model.named_modules():
        for attr, v in list(vars(module).items()):
            if not attr.startswith("_") and _is_config(v):
                tag(v, f"{name}.{attr}" if name else attr)
    _ACTIVE.append(registry)
    try:
        yield registry
    finally:
        _ACTIVE.pop()
        for d, k, tagged_value, old in swapped:
            if d.get(k) is tagged_value:
                d[k] = old
            elif isinstance(d.get(k), AttrInt):
                d[k] = int(d[k])
