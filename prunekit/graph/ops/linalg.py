"""Matrix products: a parameter on the right is a layer without a module (`params`); between activations the
product is read as an einsum (`product`)."""
from __future__ import annotations

import torch

from . import register_op
from .params import linear_with_param, param_view
from .product import matmul_labels


@register_op("matmul", "__matmul__", "bmm", "mm")
def matmul(state, func, name, args, kwargs, out):
    a, b = args[0], args[1]
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and b.dim() >= 2 and param_view(state, a) is None \
            and linear_with_param(state, a, b, None, out, -1, -2, state.where(name)):
        return  # x @ w with w a parameter: a layer without a module
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.dim() < 2 or b.dim() < 2:
        return state.unknown(name, [t for t in (a, b) if isinstance(t, torch.Tensor)])
    labels = matmul_labels(state, a, b, state.where(name))
    if labels is None:
        return state.unknown(name, [a, b])
    state.set(out, labels)


@register_op("linear")
def linear(state, func, name, args, kwargs, out):
    """``F.linear(x, w, b)``: with `w` a parameter (or one expert's slice of one), a layer without a module."""
    x = args[0] if args else kwargs.get("input")
    w = args[1] if len(args) > 1 else kwargs.get("weight")
    b = args[2] if len(args) > 2 else kwargs.get("bias")
    if not linear_with_param(state, x, w, b, out, 0, 1, state.where(name)):
        state.unknown(name, [t for t in (x, w, b) if isinstance(t, torch.Tensor)])


@register_op("_grouped_mm")
def grouped_mm(state, func, name, args, kwargs, out):
    """``torch._grouped_mm(x [S, K], w [E, K, N], offs)``: rows of `x` grouped by expert, each times its expert's
    weight; with `w` a (view of a) parameter, the K and N dims of every expert are its input and output."""
    x = args[0] if args else kwargs.get("mat_a")
    w = args[1] if len(args) > 1 else kwargs.get("mat_b")
    if not (isinstance(x, torch.Tensor) and x.dim() == 2 and isinstance(w, torch.Tensor) and w.dim() == 3
            and linear_with_param(state, x, w, None, out, -1, -2, state.where(name))):
        state.unknown(name, [t for t in (x, w) if isinstance(t, torch.Tensor)])
