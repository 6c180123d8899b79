"""Sizes read from tensors during a trace, told apart from sizes written in the code.

``x.view(b, g, c // g, h, w)`` with ``c = x.shape[1]`` follows the tensor when channels are removed; the same view
written ``x.view(b, 4, 8, h, w)``, or with sizes from a config (``self.n_heads``), does not. While tracing, every
size a tensor reports (``x.shape``, ``x.size()``, ``len(x)``) is a `ShapeInt`, and arithmetic on it stays a
`ShapeInt`, so the reshape and split rules can ask which sizes come from tensors.
"""
from __future__ import annotations

from typing import Any

import torch


class ShapeInt(int):
    """An int that came from a tensor's shape (or from arithmetic on such ints)."""


def _binary(op):
    def method(self, other):
        from .attrs import AttrInt, _freeze

        if isinstance(other, AttrInt):  # an attribute mixed with a tensor's size: it must keep its value
            _freeze(other, why=f"'{op.strip('_')}' with a size read from a tensor")
            other = int(other)
        value = getattr(int, op)(self, other)
        return ShapeInt(value) if type(value) is int else value

    method.__name__ = op
    return method


for _op in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__floordiv__", "__rfloordiv__",
            "__mod__", "__rmod__"):
    setattr(ShapeInt, _op, _binary(_op))
ShapeInt.__neg__ = lambda self: ShapeInt(-int(self))


def follows_tensor(value: Any) -> bool:
    """True for a size that follows the data: -1 (inferred) or a `ShapeInt`."""
    return isinstance(value, ShapeInt) or (type(value) is int and value == -1)


def wrap_sizes(name: str, out: Any) -> Any:
    """The result of a size query with its ints made `ShapeInt` (other results unchanged)."""
    if isinstance(out, torch.Size) and name in ("size", "__get__"):
        return torch.Size([ShapeInt(s) for s in out])
    if type(out) is int and name in ("size", "__len__"):
        return ShapeInt(out)
    return out
