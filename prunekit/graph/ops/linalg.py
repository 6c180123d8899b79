"""Matrix products between activations: the contracted dims of both sides are coupled."""
from __future__ import annotations

import torch

from ..labels import CONST, compress
from . import register_op


@register_op("matmul", "__matmul__", "bmm", "mm")
def matmul(state, func, name, args, kwargs, out):
    a, b = args[0], args[1]
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.dim() < 2 or b.dim() < 2:
        return state.unknown(name, [t for t in (a, b) if isinstance(t, torch.Tensor)])
    la, lb = state.get(a), state.get(b)
    # contraction: a[..., i, k] with b[..., k, j]
    ka = la.movedim(-1, 0).reshape(la.shape[-1], -1)
    kb = lb.movedim(-2, 0).reshape(lb.shape[-2], -1)
    n = max(ka.shape[0], kb.shape[0])
    for k in range(n):
        ra = ka[min(k, ka.shape[0] - 1)]
        rb = kb[min(k, kb.shape[0] - 1)]
        named = torch.cat([ra[ra >= 0], rb[rb >= 0]])
        if named.numel():
            state.uf.union_all(named)
            if (ra < 0).any() or (rb < 0).any():
                state.uf.pin(named, f"contraction with constant content in {state.where(name)}")
    # output keeps a's row labels and b's column labels; batch dims follow broadcasting
    rows = la.narrow(-1, 0, 1)
    cols = lb.narrow(-2, 0, 1)
    if bool((rows >= 0).any()) and bool((cols >= 0).any()):
        return state.unknown(name, [a, b])
    nd = out.dim()
    rows = rows.reshape((1,) * (nd - rows.dim()) + tuple(rows.shape))
    cols = cols.reshape((1,) * (nd - cols.dim()) + tuple(cols.shape))
    state.set(out, compress(torch.maximum(rows, cols) if bool((rows >= 0).any() or (cols >= 0).any())
                            else torch.full((1,) * nd, CONST, dtype=torch.long)))
