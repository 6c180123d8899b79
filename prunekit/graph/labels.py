"""Channel labels: integer ids that flow through the traced model in place of values.

Every traced tensor gets a *label tensor* with the same number of dims, each dim either 1 (the labels do not vary
along it) or the real size. A value >= 0 is a channel id; ``CONST`` (-1) marks content that no prunable channel owns
(the model's input, a constant, zero padding). Operations couple channels by `UnionFind.union`; a channel combined
with constant content is *pinned* (it cannot be removed without changing a constant the engine cannot rewrite).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

CONST = -1


class UnionFind:
    """Union-find over channel ids, with pins (reasons) and inexactness notes carried by the roots."""

    def __init__(self):
        self.parent: List[int] = []
        self.pins: Dict[int, str] = {}
        self.inexact: Dict[int, str] = {}

    def new(self, n: int) -> torch.Tensor:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return torch.arange(start, start + n, dtype=torch.long)

    def find(self, i: int) -> int:
        parent = self.parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if ra > rb:
            ra, rb = rb, ra
        self.parent[rb] = ra
        for notes in (self.pins, self.inexact):
            if rb in notes and ra not in notes:
                notes[ra] = notes.pop(rb)
            else:
                notes.pop(rb, None)
        return ra

    def union_pairs(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Union ids element-wise, skipping pairs where either side is CONST."""
        a, b = a.reshape(-1), b.reshape(-1)
        keep = (a >= 0) & (b >= 0) & (a != b)
        if keep.any():
            pairs = torch.unique(torch.stack([a[keep], b[keep]], 1), dim=0)
            for x, y in pairs.tolist():
                self.union(x, y)

    def union_all(self, ids: torch.Tensor) -> None:
        ids = torch.unique(ids[ids >= 0])
        for other in ids[1:].tolist():
            self.union(int(ids[0]), other)

    def pin(self, ids: torch.Tensor, reason: str) -> None:
        for i in torch.unique(ids[ids >= 0]).tolist():
            root = self.find(i)
            self.pins.setdefault(root, reason)

    def mark_inexact(self, ids: torch.Tensor, reason: str) -> None:
        for i in torch.unique(ids[ids >= 0]).tolist():
            root = self.find(i)
            self.inexact.setdefault(root, reason)

    def roots(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1).tolist()
        return torch.tensor([self.find(i) if i >= 0 else CONST for i in flat], dtype=torch.long).reshape(ids.shape)


def const_labels(ndim: int) -> torch.Tensor:
    return torch.full((1,) * ndim, CONST, dtype=torch.long)


def along(ids: torch.Tensor, dim: int, ndim: int) -> torch.Tensor:
    """A label tensor of `ndim` dims that varies only along `dim` with the given [n] ids."""
    shape = [1] * ndim
    shape[dim] = ids.numel()
    return ids.reshape(shape)


def expand_dims(labels: torch.Tensor, shape: Sequence[int], dims: Sequence[int]) -> torch.Tensor:
    """Materialise `labels` to the real size along `dims` (a copy)."""
    target = list(labels.shape)
    for d in dims:
        target[d] = shape[d]
    return labels.expand(target).clone()


def compress(labels: torch.Tensor) -> torch.Tensor:
    """Shrink dims along which the labels do not vary back to size 1."""
    for d in range(labels.dim()):
        if labels.shape[d] > 1:
            first = labels.narrow(d, 0, 1)
            if bool((labels == first).all()):
                labels = first
    return labels


def consume(uf: UnionFind, labels: torch.Tensor, dim: int, size: int, where: str) -> torch.Tensor:
    """The channel id at each of the `size` positions of `dim`, unioning labels that differ along other dims.

    A position holding a channel in some places and constant content in others pins that channel.
    """
    dim = dim % labels.dim()
    if all(labels.shape[d] == 1 for d in range(labels.dim()) if d != dim):
        flat = labels.reshape(-1)
        return flat.expand(size).clone() if flat.numel() == 1 else flat.clone()
    lab = labels.movedim(dim, 0)
    if lab.shape[0] == 1 and size > 1:
        lab = lab.expand(size, *lab.shape[1:])
    lab = lab.reshape(lab.shape[0], -1)
    ids = torch.full((lab.shape[0],), CONST, dtype=torch.long)
    for pos in range(lab.shape[0]):
        row = torch.unique(lab[pos])
        named = row[row >= 0]
        if named.numel() == 0:
            continue
        uf.union_all(named)
        if (row < 0).any():
            uf.pin(named, f"channel mixed with constant content at {where}")
        ids[pos] = named[0]
    # A label that is broadcast over the whole dim (size 1 label) describes every position equally.
    return ids


def broadcast_labels(labels: torch.Tensor, real_shape: Sequence[int], out_shape: Sequence[int]) -> torch.Tensor:
    """Align a label tensor to an output shape; dims that the real tensor broadcasts become 'neutral' (None)."""
    nd = len(out_shape)
    lab = labels.reshape((1,) * (nd - labels.dim()) + tuple(labels.shape))
    real = (1,) * (nd - len(real_shape)) + tuple(real_shape)
    neutral = [d for d in range(nd) if real[d] == 1 and out_shape[d] != 1]
    return lab, neutral


def reshape_labels(uf: UnionFind, labels: torch.Tensor, in_shape: Sequence[int], out_shape: Sequence[int],
                   outer_adaptive: Optional[Sequence[int]], where: str, attr_sizes: Optional[Dict[int, int]] = None,
                   on_attr=None) -> torch.Tensor:
    """Labels after a view/reshape from `in_shape` to `out_shape`.

    Dims are matched in contiguous runs with equal products. A run whose labels vary is materialised and reshaped.
    When a labelled dim is split into several, the pruned model must still be able to form the same split: we
    require units to be removed in lockstep across the outer factor (channel-shuffle style: the outer count is a
    constant in the user's code), unless the caller passed -1 for that outer factor (heads style: the outer count
    adapts), in which case each outer slice becomes one unit.

    `attr_sizes` holds the output sizes read from module or config attributes (`graph.attrs`); for each one
    `on_attr(value, ids)` is called with the channel ids whose kept count the size must equal after pruning (the
    attribute is rewritten to match, or the groups are refused later). A split none of whose sizes follows the
    tensor makes its outer size a unit count when that size comes from an attribute (``view(b, t, self.num_heads,
    3, self.head_dim)``).
    """
    attr_sizes = attr_sizes or {}
    in_shape, out_shape = list(in_shape), list(out_shape)
    lab = labels.reshape((1,) * (len(in_shape) - labels.dim()) + tuple(labels.shape))
    runs = _match_runs(in_shape, out_shape)
    if runs is None:
        uf.pin(labels, f"reshape {in_shape}->{out_shape} the engine cannot map at {where}")
        return const_labels(len(out_shape))
    pieces_shape: List[int] = []
    out_lab = lab
    # Materialise every run whose labels vary, then reshape the whole label tensor in one go.
    varying_dims = [d for d in range(len(in_shape)) if lab.shape[d] > 1]
    needs = []
    for (i0, i1), (o0, o1) in runs:
        if any(i0 <= d < i1 for d in varying_dims) and (i1 - i0 != 1 or o1 - o0 != 1):
            needs.extend(range(i0, i1))
    if needs:
        out_lab = expand_dims(lab, in_shape, needs)
    target = []
    for (i0, i1), (o0, o1) in runs:
        if any(out_lab.shape[d] > 1 for d in range(i0, i1)):
            target.extend(out_shape[o0:o1])
        else:
            target.extend([1] * (o1 - o0))
    out_lab = out_lab.reshape(target)
    for (i0, i1), (o0, o1) in runs:
        split_labelled = (o1 - o0) > 1 and any(out_lab.shape[d] > 1 for d in range(o0, o1))
        attr_dims = [d for d in range(o0, o1) if d in attr_sizes]
        if attr_dims and on_attr is not None:
            _attr_sizes(uf, out_lab, i0, i1, o0, o1, outer_adaptive, attr_sizes, on_attr, split_labelled)
        if split_labelled and (i1 - i0) == 1:
            follows = outer_adaptive is not None and any(o0 <= d < o1 for d in outer_adaptive)
            adaptive = outer_adaptive
            if not follows and o0 in attr_sizes and on_attr is not None:
                adaptive = list(outer_adaptive or ()) + [o0]  # whole outer slices, counted by the attribute
            _split_constraint(uf, out_lab, o0, o1, adaptive)
        elif (i1 - i0) == 1 and (o1 - o0) == 1 and out_lab.shape[o0] > 1 and o0 in attr_sizes and on_attr is not None:
            pass  # a labelled dim at a size read from an attribute: the attribute follows its kept count
        elif (i1 - i0) == 1 and (o1 - o0) == 1 and out_lab.shape[o0] > 1 and outer_adaptive is not None \
                and o0 not in outer_adaptive:
            # a labelled dim kept whole at a size written in the code (``view(b, g, c // g, ...)`` with g == c):
            # the pruned model would ask for the old size, so its channels must stay
            uf.pin(out_lab[out_lab >= 0], f"reshape to a size fixed in the code at {where}")
    return compress(out_lab)


def _ids_along(lab: torch.Tensor, d: int) -> Optional[torch.Tensor]:
    """The channel id at each position of dim `d`, or None when the ids also vary along other dims."""
    cols = lab.movedim(d, 0).reshape(lab.shape[d], -1)
    return cols[:, 0].clone() if bool((cols == cols[:, :1]).all()) else None


def _attr_sizes(uf, lab, i0, i1, o0, o1, outer_adaptive, attr_sizes, on_attr, split_labelled) -> None:
    """Tell `on_attr` what each attribute size of the run (i0..i1 -> o0..o1) must equal after pruning."""
    follows = outer_adaptive is not None and any(o0 <= d < o1 for d in outer_adaptive)
    for d in range(o0, o1):
        if d not in attr_sizes:
            continue
        value = attr_sizes[d]
        counted = None
        if split_labelled and i1 - i0 == 1 and d == o0 and not follows:
            counted = lab.movedim(d, 0).reshape(lab.shape[d], -1)[:, 0].clone()  # whole slices are units: any id
        elif not split_labelled and o1 - o0 == 1 and lab.shape[d] > 1:
            counted = _ids_along(compress(uf.roots(lab)), d)  # units: head_dim positions of one head agree
            if counted is None:  # cannot say what it counts: it keeps its value (and the channels are refused)
                counted = torch.full((int(value) + 1,), CONST, dtype=torch.long)
        if counted is None:  # constant along the data, or an inner size of whole units: keeps its value
            counted = torch.full((int(value),), CONST, dtype=torch.long)
        on_attr(value, counted)


def _split_constraint(uf: UnionFind, lab: torch.Tensor, o0: int, o1: int, outer_adaptive) -> None:
    """Tie the units of a labelled dim split into dims o0..o1-1 (see `reshape_labels`)."""
    moved = lab.movedim(tuple(range(o0, o1)), tuple(range(o1 - o0)))
    outer, inner = moved.shape[0], moved.shape[1:]
    block = moved.reshape(outer, -1, *moved.shape[o1 - o0:]).reshape(outer, int(torch.tensor(inner).prod()), -1)
    if outer_adaptive is not None and not any(o0 <= d < o1 for d in outer_adaptive):
        # every size of the split is a constant of the code (``view(b, -1, self.n_heads, self.head_dim)``): the
        # pruned model would split differently (the -1 elsewhere absorbing the change), so nothing here can go
        uf.pin(lab[lab >= 0], "reshape splits channels into sizes fixed in the code")
        return
    if outer_adaptive and o0 in outer_adaptive:
        for h in range(outer):  # whole outer slices (heads) are the units
            uf.union_all(block[h].reshape(-1))
    else:
        for h in range(1, outer):  # lockstep: inner position i is removed in every outer slice together
            uf.union_pairs(block[0], block[h])


def _match_runs(a: Sequence[int], b: Sequence[int]):
    """Pair contiguous runs of dims of `a` and `b` with equal products; None when impossible."""
    runs, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        i0, j0 = i, j
        pa = a[i] if i < len(a) else 1
        pb = b[j] if j < len(b) else 1
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb:
                if i >= len(a):
                    return None
                pa *= a[i]
                i += 1
            else:
                if j >= len(b):
                    return None
                pb *= b[j]
                j += 1
        # absorb trailing size-1 dims into the run so runs stay aligned
        runs.append(((i0, min(i, len(a))), (j0, min(j, len(b)))))
    return runs
