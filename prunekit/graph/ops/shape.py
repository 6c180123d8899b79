"""View-like operations: the same op applied to the labels (reshape via `labels.reshape_labels`)."""
from __future__ import annotations

import torch

from ..labels import compress, reshape_labels
from . import register_op
from .params import track_permute, track_unsqueeze
from ..attrs import AttrInt, record
from ..sizes import follows_tensor


def _shape_args(args, kwargs):
    rest = args[1:]
    if len(rest) == 1 and isinstance(rest[0], (tuple, list, torch.Size)):
        rest = tuple(rest[0])
    if not rest:
        rest = tuple(kwargs.get("shape", kwargs.get("size", ())))
    return [int(r) if not isinstance(r, torch.Tensor) else int(r) for r in rest]


@register_op("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as", "ravel")
def reshape(state, func, name, args, kwargs, out):
    x = args[0]
    if not isinstance(out, torch.Tensor) or not isinstance(x, torch.Tensor):
        return
    if track_unsqueeze(state, name, args, kwargs, out):  # an expert's weight made [1, in, out] for bmm
        return
    if name in ("view", "reshape") and len(args) == 2 and isinstance(args[1], torch.dtype):
        return state.unknown(name, [x])
    adaptive, attr_sizes = None, {}
    if name in ("view", "reshape"):
        requested = _raw_shape_args(args, kwargs)
        # sizes that follow the tensor: -1, or read from a tensor's shape (`graph.sizes`); others are constants
        adaptive = [i for i, r in enumerate(requested) if follows_tensor(r)]
        if len(requested) == out.dim():  # sizes read from attributes (`graph.attrs`): equations to solve later
            attr_sizes = {i: r for i, r in enumerate(requested) if isinstance(r, AttrInt)}
    where = state.where(name)
    state.set(out, reshape_labels(state.uf, state.get(x), tuple(x.shape), tuple(out.shape), adaptive, where,
                                  attr_sizes, lambda value, ids: record(state, value, ids, where)))


def _raw_shape_args(args, kwargs):
    rest = args[1:]
    if len(rest) == 1 and isinstance(rest[0], (tuple, list, torch.Size)):
        rest = tuple(rest[0])
    if not rest:
        rest = tuple(kwargs.get("shape", kwargs.get("size", ())))
    return list(rest)


@register_op("permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis", "t", "mT", "adjoint")
def permute(state, func, name, args, kwargs, out):
    x = args[0]
    if not isinstance(out, torch.Tensor):
        return
    if track_permute(state, func, args, kwargs, out):  # a transposed weight used by matmul
        return
    lab = state.get(x)
    try:
        result = func(lab, *args[1:], **kwargs)
    except Exception:
        return state.unknown(name, [x])
    state.set(out, result)


@register_op("expand", "expand_as", "broadcast_to")
def expand(state, func, name, args, kwargs, out):
    x = args[0]
    lab = state.get(x)
    lab = lab.reshape((1,) * (out.dim() - lab.dim()) + tuple(lab.shape))
    state.set(out, lab)


@register_op("repeat", "tile", "repeat_interleave")
def repeat(state, func, name, args, kwargs, out):
    x = args[0]
    lab = state.get(x)
    full = lab.expand(x.shape).clone() if x.numel() <= 1 << 22 else None
    if full is None:
        return state.unknown(name, [x])
    try:
        state.set(out, compress(func(full, *args[1:], **kwargs)))
    except Exception:
        state.unknown(name, [x])


@register_op("__get__")
def attribute(state, func, name, args, kwargs, out):
    """Tensor properties: `.data` and friends keep labels, `.T`/`.mT` transpose them; sizes carry nothing."""
    if not isinstance(out, torch.Tensor) or not args or not isinstance(args[0], torch.Tensor):
        return
    x = args[0]
    if track_permute(state, func, args, kwargs, out) if out.shape != x.shape else False:
        return
    lab = state.get(x)
    if out.shape == x.shape:
        state.set(out, lab)
    elif out.dim() == x.dim() and x.dim() >= 2 and tuple(out.shape) == tuple(x.shape[:-2]) + (x.shape[-1], x.shape[-2]):
        state.set(out, lab.transpose(-1, -2))
    elif out.dim() == x.dim() and tuple(out.shape) == tuple(reversed(x.shape)):
        state.set(out, lab.permute(*reversed(range(x.dim()))))
    else:
        state.unknown("attribute", [x])
