"""Parameters used through functions instead of modules: ``F.linear(x, w)``, ``x @ w``, ``torch.bmm`` with a
weight that is a parameter, one expert's slice of a 3-D parameter (``w[e]``), or a transpose of either.

Such a weight is a layer without a module: its input dim consumes the activation's channels (role ``in``) and its
output dim produces new channels (role ``out``), exactly as `nn.Linear` does. Slicing a leading dim by an index
(mixture-of-experts weights ``[experts, out, in]``) keeps the map from view dims to parameter dims, so every expert's
call records the same parameter dims: the records are merged position by position (`trace.merge_members`), so an
expert FFN width is pruned jointly across experts (a rectangular 3-D weight cannot lose different rows per expert).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..labels import along, consume


def param_view(state, t) -> Optional[Tuple[str, str, Tuple[int, ...]]]:
    """(module, name, parameter dim of each dim of `t`) when `t` is a parameter or a tracked view of one."""
    if not isinstance(t, torch.Tensor):
        return None
    owner = state.param_owner.get(id(t))
    if owner is not None and owner[2]:
        return owner[0], owner[1], tuple(range(t.dim()))
    entry = state.views.get(id(t))
    if entry is not None and entry[0] is t:
        return entry[1], entry[2], entry[3]
    return None


def _index_value(i) -> bool:
    return isinstance(i, int) or (isinstance(i, torch.Tensor) and i.dim() == 0 and not i.is_floating_point())


def track_getitem(state, x, idx, out) -> bool:
    """``w[e]`` / ``w[e, :, :]`` on a parameter: `out` is a view whose dims are the parameter's trailing dims."""
    view = param_view(state, x)
    if view is None or not isinstance(out, torch.Tensor):
        return False
    items = idx if isinstance(idx, tuple) else (idx,)
    dims, d = [], 0
    for it in items:
        if _index_value(it):
            d += 1
        elif isinstance(it, slice) and it == slice(None):
            dims.append(view[2][d])
            d += 1
        else:
            return False
    dims += list(view[2][d:])
    if len(dims) != out.dim():
        return False
    state.views[id(out)] = (out, view[0], view[1], tuple(dims))
    return True


def track_permute(state, func, args, kwargs, out) -> bool:
    """A transpose / permute of a parameter view is a view with its dims reordered."""
    x = args[0] if args else None
    view = param_view(state, x)
    if view is None or not isinstance(out, torch.Tensor) or out.dim() != x.dim():
        return False
    if getattr(func, "__name__", "") == "__get__":  # .T / .mT
        order = tuple(reversed(range(x.dim()))) if tuple(out.shape) == tuple(reversed(x.shape)) else \
            tuple(range(x.dim() - 2)) + (x.dim() - 1, x.dim() - 2)
        state.views[id(out)] = (out, view[0], view[1], tuple(view[2][d] for d in order))
        return True
    try:
        order = func(torch.empty(tuple(range(2, 2 + x.dim()))), *args[1:], **kwargs).shape
    except Exception:  # noqa: BLE001 - not a permutation we can replay
        return False
    dims = tuple(view[2][s - 2] for s in order)
    state.views[id(out)] = (out, view[0], view[1], dims)
    return True


def linear_with_param(state, x: torch.Tensor, w: torch.Tensor, b, out: torch.Tensor, w_out: int, w_in: int,
                      where: str) -> bool:
    """``out[..., o] = sum_i x[..., i] w[o, i] (+ b[o])`` with `w` a parameter (view): dims `w_out` / `w_in` of the
    view hold the output / input positions. Returns False when `w` is not a parameter."""
    view = param_view(state, w)
    if view is None:
        return False
    module, name, dims = view
    if dims[w_in] < 0 or dims[w_out] < 0:
        return False
    in_ids = consume(state.uf, state.get(x), -1, x.shape[-1], where)
    state.member(module, name, dims[w_in], in_ids, "in")
    out_ids = state.new_channels(w.shape[w_out], tags={"signature": f"functional:{name}"})
    state.member(module, name, dims[w_out], out_ids, "out")
    bias = param_view(state, b)
    if bias is not None and len(bias[2]) == 1:
        state.member(bias[0], bias[1], bias[2][0], out_ids, "out")
    elif isinstance(b, torch.Tensor):
        state.uf.pin(out_ids, f"bias that is not a parameter in {where}")
    state.set(out, along(out_ids, out.dim() - 1, out.dim()))
    return True


def track_unsqueeze(state, name, args, kwargs, out) -> bool:
    """``w.unsqueeze(d)`` / ``w.squeeze(d)`` of a parameter view: the same view with a size-1 dim added or
    dropped (-1 marks a dim that is not the parameter's)."""
    x = args[0] if args else None
    view = param_view(state, x)
    if view is None or not isinstance(out, torch.Tensor) or name not in ("unsqueeze", "squeeze"):
        return False
    dims = list(view[2])
    if name == "unsqueeze":
        d = args[1] if len(args) > 1 else kwargs.get("dim")
        dims.insert(d % (x.dim() + 1), -1)
    else:
        keep = [i for i in range(x.dim()) if out.dim() == x.dim() or x.shape[i] != 1 or i not in
                _squeezed(args, kwargs, x)]
        dims = [dims[i] for i in keep]
    if len(dims) != out.dim():
        return False
    state.views[id(out)] = (out, view[0], view[1], tuple(dims))
    return True


def _squeezed(args, kwargs, x):
    d = args[1] if len(args) > 1 else kwargs.get("dim")
    if d is None:
        return set(range(x.dim()))
    return {v % x.dim() for v in (d if isinstance(d, (tuple, list)) else (d,))}
