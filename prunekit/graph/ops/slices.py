"""Slices of a channel dim at offsets: fused projections (one linear producing q, k and v, or gate and up).

``qkv[..., :d]`` keeps the channels of positions ``0..d-1`` of its producer, so the slice's labels are that
sub-range. The pruned model slices at the same place in its code, so the slice stays right only if its offsets move
with the pruned width:

* offsets read from the tensor (``d = h.shape[-1] // 2``; a `ShapeInt`) that cut the dim into ``m`` equal segments
  (halves, thirds, quarters: q, k and v of grouped-query heads 2:1:1): every segment is removed in lockstep, so
  each offset lands at the same fraction of the pruned width. Each slice keeps its own sub-range; consumers couple
  them further (heads through the attention rule, ``silu(gate) * up`` element-wise);
* offsets written in the code or read from a config (``qkv[..., :self.q_size]``): the pruned model would slice at the
  old offset, so the channels are refused, with a reason naming the producing module and the offsets.
"""
from __future__ import annotations

import math
from typing import List, Optional

import torch

from ..sizes import ShapeInt

# More segments than this from "following" offsets is more likely ``x.shape[-1] // 3 + 4`` (a constant that
# does not scale with the pruned width) than a fraction of the width: refused.
MAX_SEGMENTS = 4


def _boundaries(it: slice, size: int) -> Optional[List[int]]:
    """The interior offsets of a step-1 slice of a dim of `size` (those that cut it), or None when not plain."""
    if it.step not in (None, 1):
        return None
    out = []
    for value, edge in ((it.start, 0), (it.stop, size)):
        if value is None:
            continue
        if not isinstance(value, int) or value < 0:
            return None
        if value != edge and 0 < value < size:
            out.append(value)
    return out


def tie_slice_segments(state, lab: torch.Tensor, d: int, it: slice, size: int) -> bool:
    """Accept a slice of labelled dim `d` whose offsets follow the tensor, tying its equal segments in lockstep.

    Args:
        state: the trace state (its union-find receives the ties).
        lab: labels of the sliced tensor; ``lab.shape[d] == size``.
        d: the sliced dim.
        it: the slice.
        size: the real size of dim `d`.

    Returns:
        True when the slice stays right after pruning (ties made), False when it must be refused.
    """
    bounds = _boundaries(it, size)
    if bounds is None or not all(isinstance(b, ShapeInt) for b in bounds):
        return False
    seg = math.gcd(size, *[int(b) for b in bounds])
    m = size // seg
    if m > MAX_SEGMENTS:
        return False
    pieces = torch.split(lab, seg, d)
    for piece in pieces[1:]:  # segment j position i goes with segment 0 position i: offsets stay at j/m of the width
        state.uf.union_pairs(pieces[0], piece)
    return True


def attr_slice(state, lab: torch.Tensor, d: int, it: slice, size: int, consumed=()) -> Optional[bool]:
    """A slice whose offsets are read from attributes (``qkv[..., :self.config.num_attention_heads *
    self.head_dim]``): each offset must equal, after pruning, the kept positions below it, so it is recorded as an
    equation on those attributes (`graph.attrs`; solved or refused in `graph.attr_solve`).

    Returns:
        None when no offset comes from an attribute (the other rules decide), True when recorded, False when the
        offsets cannot follow (a literal or a tensor size cutting the dim alongside, a step, a negative offset).
    """
    from ..attrs import AttrInt, record
    from ..labels import _ids_along

    values = [v for v in (it.start, it.stop) if v is not None]
    if not any(isinstance(v, AttrInt) for v in values):
        return None
    if it.step not in (None, 1):
        return False
    for value, edge in ((it.start, 0), (it.stop, size)):
        if value is None or isinstance(value, AttrInt):
            continue
        if isinstance(value, ShapeInt) or value != edge:
            return False
    if any(int(v) < 0 or int(v) > size for v in values):
        return False
    ids = _ids_along(lab.expand(*[size if k == d else lab.shape[k] for k in range(lab.dim())]), d)
    if ids is None:
        return False
    where = state.where("[]")
    for value in (it.start, it.stop):
        if isinstance(value, AttrInt):
            record(state, value, ids[:int(value)], where)
    for value in consumed:
        state.attrs.consumed.add(id(value))
    return True


def producer_modules(state, lab: torch.Tensor) -> List[str]:
    """Names of the modules whose outputs own the channels in `lab` (the fused projection behind a slice)."""
    ids = set(torch.unique(state.uf.roots(lab[lab >= 0])).tolist())
    names = []
    for rec in state.members:
        if rec.role == "out" and rec.module not in names and ids.intersection(state.uf.roots(rec.ids).tolist()):
            names.append(rec.module)
    return names


def slice_refusal(state, lab: torch.Tensor, d: int, it: slice, size: int, op: str = "[]") -> str:
    """Why a slice of a channel dim is refused, naming the producing module and the offsets."""
    producers = producer_modules(state, lab)
    source = f"the output of module '{producers[0]}'" if producers else "a channel dim"
    start = "" if it.start is None else int(it.start)
    stop = "" if it.stop is None else int(it.stop)
    step = "" if it.step in (None, 1) else f":{it.step}"
    bounds = _boundaries(it, size)
    if bounds is not None and all(isinstance(b, ShapeInt) for b in bounds):
        why = f"its offsets cut the {size} positions into more than {MAX_SEGMENTS} equal segments"
    else:
        why = "the offsets are fixed in the code (a pruned width would move them)"
    return (f"slice [{start}:{stop}{step}] of {source} (dim of size {size}) by {state.where(op)}: {why}; "
            f"read the offsets from the tensor (``d = x.shape[-1] // 2``) to prune per slice")
