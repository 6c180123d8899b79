"""Products that contract dims: ``einsum``, ``matmul`` / ``bmm`` between activations, and attention
(``F.scaled_dot_product_attention``), all read as one einsum over named dims.

For ``out[free, batch] = sum_contracted prod_i operand_i[...]``:

* batch dims (in the output and in several operands) pair their positions across operands, as an element-wise
  op does: removing position p of one operand needs it removed from the others;
* contracted dims pair their positions too; a channel contracted against content the engine cannot slice (a
  constant, the model's input) is pinned;
* free dims (in the output and one operand) pass their channels through.

An operand whose channels vary along a contracted dim gives every output position a mix of several channels, so its
labels do not reach the output (its channels are then removed only where the contraction sums them, which zeroed
channels do not change). Attention heads follow: ``q @ k^T`` pairs the heads of q and k (a batch dim), and
``softmax(...) @ v`` pairs them with the heads of v, so a head is one unit over q, k and v when the reshapes make
whole heads the units (``view(B, T, -1, head_dim)``).
"""
from __future__ import annotations

import string
from typing import List, Optional, Sequence, Tuple

import torch

from ..labels import CONST, compress
from . import register_op


def _parse(equation: str, ndims: Sequence[int]) -> Tuple[List[str], str]:
    eq = equation.replace(" ", "")
    lhs, _, rhs = eq.partition("->")
    terms = lhs.split(",")
    used = set(c for c in eq if c.isalpha())
    spare = [c for c in string.ascii_letters if c not in used]
    ell_n = max((nd - (len(t) - 3) for t, nd in zip(terms, ndims) if "..." in t), default=0)
    ell = "".join(spare[:ell_n])
    out_terms = []
    for t, nd in zip(terms, ndims):
        if "..." in t:
            k = nd - (len(t) - 3)
            t = t.replace("...", ell[ell_n - k:])
        out_terms.append(t)
    if "->" in eq:
        rhs = rhs.replace("...", ell)
    else:
        counts = {c: sum(t.count(c) for t in out_terms) for c in set("".join(out_terms))}
        rhs = ell + "".join(sorted(c for c, n in counts.items() if n == 1 and c not in ell))
    return out_terms, rhs


def product_labels(state, operands: Sequence[torch.Tensor], terms: Sequence[str], out_term: str, where: str
                   ) -> Optional[torch.Tensor]:
    """Couple the operands' channels as described in the module docstring; the output's labels (None: unknown)."""
    letters = sorted(set("".join(terms)) | set(out_term))
    pos = {c: i for i, c in enumerate(letters)}
    sizes = {}
    aligned = []
    for t, term in zip(operands, terms):
        if len(set(term)) != len(term) or len(term) != t.dim():
            return None  # repeated letters (diagonals) or a malformed term
        lab = state.get(t)
        lab = lab.reshape((1,) * (t.dim() - lab.dim()) + tuple(lab.shape))
        if bool((lab >= 0).any()):  # compare units, not ids: a head's positions are one unit under several ids
            lab = compress(state.uf.roots(lab))
        shape = [1] * len(letters)
        real = [1] * len(letters)
        for d, c in enumerate(term):
            shape[pos[c]] = lab.shape[d]
            real[pos[c]] = t.shape[d]
            sizes[c] = max(sizes.get(c, 1), t.shape[d])
        perm = sorted(range(len(term)), key=lambda d: pos[term[d]])
        aligned.append((lab.permute(perm).reshape(shape), real, term))
    contracted = [c for c in letters if c not in out_term]
    # pair positions of dims shared by several operands (batch and contracted dims)
    for c in letters:
        holders = [(lab, real) for lab, real, term in aligned if c in term and real[pos[c]] > 1]
        if len(holders) < 2:
            continue
        for i in range(1, len(holders)):
            _pair(state, holders[0], holders[i], pos[c], c in contracted, where)
    contributions = []
    for lab, real, term in aligned:
        mixed = any(lab.shape[pos[c]] > 1 for c in contracted if c in term)
        if mixed or not bool((lab >= 0).any()):
            continue
        for c in contracted:
            lab = lab.narrow(pos[c], 0, 1)
        contributions.append(state.uf.roots(lab))  # units as paired above
    nd = len(letters)
    if not contributions:
        res = torch.full((1,) * nd, CONST, dtype=torch.long)
    else:
        target = [max(int(l.shape[d]) for l in contributions) for d in range(nd)]
        res = torch.full(target, CONST, dtype=torch.long)
        for lab in contributions:
            lab = lab.expand(target)
            named = lab >= 0
            clash = named & (res >= 0) & (res != lab)
            if clash.any():  # two operands' channels would own one output position
                return None
            res = torch.where(named, lab, res)
    for c in contracted:
        res = res.narrow(pos[c], 0, 1)
    keep = [pos[c] for c in out_term]
    res = res.permute(keep + [pos[c] for c in contracted]).reshape([res.shape[k] for k in keep])
    return compress(res)


def _pair(state, a, b, dim: int, contracted: bool, where: str) -> None:
    """Union the labels of two operands position by position along every shared dim of the letter space."""
    la, ra = a
    lb, rb = b
    if la.shape[dim] == 1 and lb.shape[dim] == 1:
        return
    target = [max(x, y) for x, y in zip(la.shape, lb.shape)]
    ea, eb = la.expand(target), lb.expand(target)
    both = (ea >= 0) & (eb >= 0)
    if both.any():
        state.uf.union_pairs(ea[both], eb[both])
    one = (ea >= 0) ^ (eb >= 0)
    if one.any():
        named = torch.where(ea >= 0, ea, eb)[one]
        state.uf.pin(named, f"channel {'contracted' if contracted else 'paired'} with content the engine cannot "
                            f"slice in {where}")


@register_op("einsum")
def einsum(state, func, name, args, kwargs, out):
    equation = args[0]
    ops = list(args[1:])
    if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
        ops = list(ops[0])
    tensors = [t for t in ops if isinstance(t, torch.Tensor)]
    if not isinstance(equation, str) or len(tensors) != len(ops) or not isinstance(out, torch.Tensor):
        return state.unknown(name, tensors)
    try:
        terms, rhs = _parse(equation, [t.dim() for t in ops])
    except Exception:  # noqa: BLE001 - an equation form we do not read
        return state.unknown(name, tensors)
    if len(ops) == 2 and len(terms[1]) == 2 and _einsum_with_param(state, ops, terms, rhs, out, name):
        return
    res = product_labels(state, ops, terms, rhs, state.where(name))
    if res is None:
        return state.unknown(name, tensors)
    state.set(out, res)


def _einsum_with_param(state, ops, terms, rhs, out, name) -> bool:
    """``einsum('...i,oi->...o', x, w)`` with `w` a parameter: a linear layer without a module."""
    from .params import linear_with_param, param_view

    x, w = ops
    if param_view(state, w) is None:
        return False
    wi, wo = terms[1]
    if terms[0][-1:] == wo and wi in rhs:
        wi, wo = wo, wi
    if terms[0][-1:] != wi or rhs[-1:] != wo or wi in rhs or terms[0][:-1] != rhs[:-1]:
        return False
    return linear_with_param(state, x, w, None, out, terms[1].index(wo), terms[1].index(wi), state.where(name))


def matmul_labels(state, a: torch.Tensor, b: torch.Tensor, where: str) -> Optional[torch.Tensor]:
    """``a @ b`` with both operands of 2 or more dims, as the einsum ``...ik,...kj->...ij``."""
    nd = max(a.dim(), b.dim())
    batch = string.ascii_lowercase[:nd - 2]
    ta = batch[len(batch) - (a.dim() - 2):] + "xy"
    tb = batch[len(batch) - (b.dim() - 2):] + "yz"
    return product_labels(state, [a, b], [ta, tb], batch + "xz", where)


@register_op("scaled_dot_product_attention")
def attention(state, func, name, args, kwargs, out):
    """``softmax(q k^T * scale + mask) v`` over q [..., H, L, E], k [..., Hk, S, E], v [..., Hk, S, Ev]; with
    ``enable_gqa`` each key/value head serves H / Hk query heads. Read as ``q k^T`` then ``probs @ v`` (see the
    module docstring). Without an explicit `scale` the default 1/sqrt(E) changes if E shrinks, so channels of E
    that could be removed apart from their head are pinned."""
    names = ("query", "key", "value")
    q, k, v = (args[i] if len(args) > i else kwargs.get(names[i]) for i in range(3))
    mask = args[3] if len(args) > 3 else kwargs.get("attn_mask")
    where = state.where(name)
    tensors = [t for t in (q, k, v, mask) if isinstance(t, torch.Tensor)]
    if isinstance(mask, torch.Tensor) and bool((state.get(mask) >= 0).any()):
        return state.unknown(name, tensors)
    if q.dim() < 3 or q.dim() != k.dim() or q.shape[-3] % k.shape[-3]:
        return state.unknown(name, tensors)
    rep = q.shape[-3] // k.shape[-3]
    lk, lv = _repeat_heads(state.get(k), k, rep), _repeat_heads(state.get(v), v, rep)
    heads = tuple(q.shape[:-2])
    kk, vv = _standin(heads + tuple(k.shape[-2:])), _standin(heads + tuple(v.shape[-2:]))
    b = string.ascii_lowercase[:q.dim() - 2]
    scores = product_labels(_Proxy(state, {id(kk): lk, id(vv): lv}), [q, kk], [b + "le", b + "se"], b + "ls",
                            where)
    if scores is None:
        return state.unknown(name, tensors)
    if kwargs.get("scale") is None and len(args) < 7:
        for lab in (state.get(q), lk):
            _pin_partial_head_dim(state, lab.reshape((1,) * (q.dim() - lab.dim()) + tuple(lab.shape)), where)
    probs = _standin(tuple(q.shape[:-1]) + (k.shape[-2],))
    res = product_labels(_Proxy(state, {id(probs): scores, id(vv): lv}), [probs, vv], [b + "ls", b + "se"],
                         b + "le", where)
    if res is None:
        return state.unknown(name, tensors)
    state.set(out, res)


def _pin_partial_head_dim(state, lab: torch.Tensor, where: str) -> None:
    """Pin the head_dim channels of `lab` [..., E] unless each head's E positions are one unit."""
    if lab.shape[-1] <= 1:
        return
    per_head = lab.movedim(-1, 0).reshape(lab.shape[-1], -1)
    for j in range(per_head.shape[1]):
        roots = {state.uf.find(int(i)) for i in per_head[:, j].tolist() if i >= 0}
        if len(roots) > 1:
            state.uf.pin(lab, f"head_dim of {where}: its default scale 1/sqrt(E) changes if E shrinks")
            return


def _repeat_heads(lab: torch.Tensor, t: torch.Tensor, rep: int) -> torch.Tensor:
    """Labels of a key/value tensor repeated to the query heads (grouped-query attention)."""
    lab = lab.reshape((1,) * (t.dim() - lab.dim()) + tuple(lab.shape))
    return lab.repeat_interleave(rep, dim=-3) if rep > 1 and lab.shape[-3] > 1 else lab


def _standin(shape) -> torch.Tensor:
    """A tensor of `shape` with no storage of its own, to carry labels through `product_labels`."""
    return torch.empty((1,) * len(shape)).expand(tuple(shape))


class _Proxy:
    """The trace state, with labels given for stand-in tensors."""

    def __init__(self, state, overrides):
        self._state, self._over = state, overrides
        self.uf = state.uf

    def get(self, t):
        lab = self._over.get(id(t))
        return lab if lab is not None else self._state.get(t)
