"""Concatenation, splitting, slicing and padding along possibly-labelled dims."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..labels import CONST, compress, expand_dims
from . import register_op
from .params import track_getitem
from ..sizes import ShapeInt, follows_tensor
from .slices import attr_slice, slice_refusal, tie_slice_segments


def _dim(args, kwargs, pos, default=0):
    if "dim" in kwargs:
        return kwargs["dim"]
    if "axis" in kwargs:
        return kwargs["axis"]
    return args[pos] if len(args) > pos and isinstance(args[pos], int) else default


@register_op("cat", "concat", "concatenate", "stack")
def cat(state, func, name, args, kwargs, out):
    seq = args[0] if args else kwargs.get("tensors")
    d = _dim(args, kwargs, 1)
    if name == "stack":
        seq = [t.unsqueeze(d) for t in seq]
        state_labels = [state.get(t0).unsqueeze(d % (t0.dim() + 1)) for t0 in (args[0] if args else kwargs["tensors"])]
    else:
        state_labels = [state.get(t) for t in seq]
    nd = out.dim()
    d = d % nd
    labs = []
    target = [1] * nd
    for lab in state_labels:
        lab = lab.reshape((1,) * (nd - lab.dim()) + tuple(lab.shape))
        for k in range(nd):
            if k != d:
                target[k] = max(target[k], lab.shape[k])
        labs.append(lab)
    pieces = []
    for lab, t in zip(labs, seq):
        size = [target[k] if k != d else t.shape[d] for k in range(nd)]
        pieces.append(lab.expand(size))
    state.set(out, compress(torch.cat(pieces, d)))


def _split_pieces(state, x, d):
    lab = state.get(x)
    if lab.shape[d] == 1 and x.shape[d] > 1:
        return lab, False
    return lab, True


@register_op("chunk", "split", "tensor_split", "split_with_sizes", "unbind", "hsplit", "vsplit")
def split(state, func, name, args, kwargs, out):
    """Splitting a labelled dim.

    * `chunk` (equal parts that follow the tensor's size) stays correct after pruning if every part loses the same
      positions, so parts are tied in lockstep.
    * Parts of fixed sizes (constants of the code) and ONE part whose size follows the tensor
      (``split(x, [4, x.shape[1] - 4])``, or the remainder after constant `tensor_split` indices): the fixed parts'
      channels are pinned, so the fixed parts keep their sizes and contents, and the free part alone shrinks; its
      size in the pruned model is again whatever the fixed parts leave. See `_free_part`.
    * Otherwise (all sizes fixed, ``split(x, 3)`` whose number of parts would change): every channel is pinned."""
    x = args[0]
    if name == "unbind":
        d = _dim(args, kwargs, 1)
    elif name in ("hsplit", "vsplit"):
        d = 1 if name == "hsplit" else 0
    else:
        d = _dim(args, kwargs, 2)
    d = d % x.dim()
    lab, labelled = _split_pieces(state, x, d)
    parts = list(out) if isinstance(out, (tuple, list)) else [out]
    if not labelled:
        for p in parts:
            state.set(p, lab)
        return
    full = expand_dims(lab, x.shape, [d])
    sizes = [p.shape[d] if name != "unbind" else 1 for p in parts]
    pieces = torch.split(full, sizes, d)
    equal = len(set(sizes)) == 1 and sum(sizes) == x.shape[d]
    size_arg = args[1] if len(args) > 1 else next((kwargs[k] for k in ("split_size_or_sections", "split_size",
                                                                       "split_sizes", "indices_or_sections",
                                                                       "indices", "sections") if k in kwargs), None)
    from_shape = follows_tensor(size_arg) if not isinstance(size_arg, (list, tuple)) else \
        all(follows_tensor(s) for s in size_arg)
    if (name == "chunk" or (name in ("split", "split_with_sizes") and from_shape)) and equal:
        # equal parts whose size follows the tensor (chunk, or split(x.shape[1] // 3)): removed in lockstep
        for piece in pieces[1:]:
            state.uf.union_pairs(pieces[0], piece)
    else:
        free = _free_part(name, size_arg, sizes, x.shape[d])
        for i, piece in enumerate(pieces):
            if i != free:
                state.uf.pin(piece, f"split into fixed sizes {sizes} by {state.where(name)}" if free is None else
                             f"part {i} of a split into sizes {sizes} by {state.where(name)} has a size fixed in "
                             f"the code (only part {free}, whose size follows the tensor, can shrink)")
    for p, piece in zip(parts, pieces):
        piece = piece.squeeze(d) if name == "unbind" else piece
        state.set(p, compress(piece))


def _free_part(name: str, size_arg, sizes, total: int) -> Optional[int]:
    """The index of the one part of a split whose size follows the tensor while all others are code constants, or
    None when there is no such single part.

    Pruning only that part's channels (the others pinned) is exact: each fixed part keeps its size and, since
    nothing before it moves except whole free positions, it keeps the same channels; the pruned model's free size is
    derived again from the (smaller) tensor. Two free parts would need to know how their sizes depend on the width,
    and an int `split_size` gives a number of parts that changes with the width: both are refused.

    Args:
        name: the traced op (``split``, ``split_with_sizes``, ``tensor_split``, ...).
        size_arg: its size / index argument as the code passed it.
        sizes: the traced part sizes along the split dim.
        total: the size of the split dim.
    """
    if not isinstance(size_arg, (list, tuple)) or not size_arg or sum(sizes) != total:
        return None
    if name in ("split", "split_with_sizes") and len(size_arg) == len(sizes):
        free = [i for i, s in enumerate(size_arg) if isinstance(s, ShapeInt)]
        fixed = [s for i, s in enumerate(size_arg) if i not in free]
        if len(free) == 1 and all(type(s) is int and s >= 0 for s in fixed):
            return free[0]
        return None
    if name in ("tensor_split", "hsplit", "vsplit") and len(size_arg) + 1 == len(sizes):
        # constant indices: every part but the last is [i_k, i_k+1), fixed; the last runs to the end of the dim
        if all(type(i) is int and 0 <= i <= total for i in size_arg) and list(size_arg) == sorted(size_arg):
            return len(sizes) - 1
    return None


def _units(state, lab: torch.Tensor) -> torch.Tensor:
    """Labels as units (union-find roots), compressed: a dim whose positions all belong to one unit at every
    index of the other dims (head_dim within whole heads) holds no channel boundary, so indexing it at constant
    positions (partial rotary: ``q[..., :rotary_dim]``) keeps every unit whole."""
    if lab.numel() <= 1 or not bool((lab >= 0).any()):
        return lab
    return compress(state.uf.roots(lab))


def _is_full(s: slice, size: int) -> bool:
    return s.step in (None, 1) and (s.start in (None, 0)) and (s.stop is None or s.stop >= size)


@register_op("__getitem__")
def getitem(state, func, name, args, kwargs, out):
    x, idx = args[0], args[1]
    if not isinstance(out, torch.Tensor):
        return
    if track_getitem(state, x, idx, out):  # one expert's slice of a 3-D weight: a view, used by linear/matmul
        return
    lab = _units(state, state.get(x))
    items = idx if isinstance(idx, tuple) else (idx,)
    if any(isinstance(i, torch.Tensor) and i.dtype != torch.bool and i.dim() > 0 for i in items) or \
            any(isinstance(i, (list,)) for i in items):
        labelled_axes = _labelled_index_axes(lab, x, items)
        if labelled_axes:
            return state.unknown("indexing by tensor", [x])
    # Expand labels along every dim that is indexed with something other than a full slice.
    dims = _indexed_dims(x, items)
    for d, it in dims:
        if lab.dim() > d and lab.shape[d] > 1 and not (isinstance(it, slice) and _is_full(it, x.shape[d])):
            if isinstance(it, slice) and tie_slice_segments(state, lab, d, it, x.shape[d]):
                continue  # a sub-range whose offsets follow the pruned width: its labels are the sub-range's
            if isinstance(it, slice) and attr_slice(state, lab, d, it, x.shape[d]):
                continue  # offsets read from attributes, which are rewritten to the kept positions below them
            reason = slice_refusal(state, lab, d, it, x.shape[d]) if isinstance(it, slice) else \
                f"indexing a channel dim with a constant by {state.where('[]')}"
            state.uf.pin(lab, reason)
            state.set(out, torch.full((1,) * out.dim(), CONST, dtype=torch.long))
            return
    full = expand_dims(lab, x.shape, [d for d, _ in dims if d < lab.dim() and lab.shape[d] == 1 and x.shape[d] > 1])
    try:
        res = full[idx]
    except Exception:
        return state.unknown("[]", [x])
    state.set(out, compress(res.reshape(out.shape) if res.numel() == out.numel() else res))


def _indexed_dims(x, items):
    dims, d = [], 0
    n_real = sum(1 for i in items if i is not None and i is not Ellipsis)
    for it in items:
        if it is Ellipsis:
            d += x.dim() - n_real
            continue
        if it is None:
            continue
        dims.append((d, it))
        d += 1
    return dims


def _labelled_index_axes(lab, x, items):
    """Labelled dims indexed by a list or an integer tensor (full slices of other labelled dims do not count:
    Falcon's ``qkv[:, :, :, [-2]]`` picks inside whole heads)."""
    return [d for d, it in _indexed_dims(x, items) if d < lab.dim() and lab.shape[d] > 1 and
            (isinstance(it, list) or (isinstance(it, torch.Tensor) and it.dim() > 0 and it.dtype != torch.bool))]


@register_op("narrow", "select", "index_select")
def narrow(state, func, name, args, kwargs, out):
    x = args[0]
    d = _dim(args, kwargs, 1) % x.dim()
    lab = _units(state, state.get(x))
    if lab.shape[d] > 1 and name == "narrow":  # narrow(x, d, start, length) is the slice x[..., start:start + length]
        start = args[2] if len(args) > 2 else kwargs["start"]
        length = args[3] if len(args) > 3 else kwargs["length"]
        it = slice(start, start + length) if isinstance(start, int) and isinstance(length, int) else None
        if it is not None and (tie_slice_segments(state, lab, d, it, x.shape[d])
                               or attr_slice(state, lab, d, it, x.shape[d], consumed=(start, length))):
            state.set(out, compress(expand_dims(lab, x.shape, [d]).narrow(d, start, length)))
            return
        if it is not None:
            state.uf.pin(lab, slice_refusal(state, lab, d, it, x.shape[d], name))
            state.set(out, torch.full((1,) * out.dim(), CONST, dtype=torch.long))
            return
    if lab.shape[d] > 1:
        state.uf.pin(lab, f"selecting fixed positions of a channel dim by {state.where(name)}")
        state.set(out, torch.full((1,) * out.dim(), CONST, dtype=torch.long))
        return
    state.set(out, lab.squeeze(d) if name == "select" else lab)


@register_op("pad")
def pad(state, func, name, args, kwargs, out):
    """Constant padding: padded positions are constant content; positions of a padded channel dim follow."""
    x = args[0]
    amounts = list(args[1] if len(args) > 1 else kwargs["pad"])
    mode = kwargs.get("mode", args[2] if len(args) > 2 else "constant")
    lab = state.get(x)
    nd = x.dim()
    dims_padded = [nd - 1 - i // 2 for i in range(0, len(amounts), 2) if amounts[i] or amounts[i + 1]]
    labelled = [d for d in dims_padded if lab.shape[d] > 1]
    if not labelled:
        state.set(out, lab)
        return
    if mode != "constant":
        return state.unknown(f"pad(mode={mode})", [x])
    full = expand_dims(lab, x.shape, labelled)
    amounts_lab = []
    for i in range(0, len(amounts), 2):
        d = nd - 1 - i // 2
        amounts_lab += [amounts[i], amounts[i + 1]] if d in labelled else [0, 0]
    state.set(out, compress(F.pad(full, amounts_lab, value=CONST)))
