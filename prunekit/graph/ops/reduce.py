"""Reductions, pooling, resampling and normalisations written as functions."""
from __future__ import annotations

import torch

from ..labels import CONST, compress, consume
from . import register_op


def _reduce_dims(args, kwargs, ndim):
    d = kwargs.get("dim", args[1] if len(args) > 1 and not isinstance(args[1], bool) else None)
    if d is None:
        return list(range(ndim))
    d = [d] if isinstance(d, int) else list(d)
    return [x % ndim for x in d]


@register_op("sum", "mean", "amax", "amin", "max", "min", "std", "var", "norm", "prod", "logsumexp", "nansum",
             "nanmean", "any", "all", "argmax", "argmin", "count_nonzero", "median")
def reduce(state, func, name, args, kwargs, out):
    """Reducing over a channel dim: a sum is exact under removal of zeroed channels; other reductions are not."""
    x = args[0]
    if not isinstance(x, torch.Tensor):
        return
    outs = out if isinstance(out, (tuple, list)) else (out,)
    lab = state.get(x)
    dims = _reduce_dims(args, kwargs, x.dim())
    reduced_labelled = [d for d in dims if lab.shape[d] > 1]
    if reduced_labelled:
        ids = lab[lab >= 0]
        if name in ("sum", "nansum"):
            pass
        elif name in ("max", "amax", "mean", "norm", "logsumexp", "nanmean"):
            state.uf.mark_inexact(ids, f"'{name}' over channels in {state.where(name)}")
        else:
            state.uf.pin(ids, f"'{name}' over channels in {state.where(name)}")
    keep = kwargs.get("keepdim", len(args) > 2 and args[2] is True)
    res = lab
    for d in sorted(dims, reverse=True):
        res = res.narrow(d, 0, 1) if res.shape[d] > 1 else res
        if not keep:
            res = res.squeeze(d) if res.dim() > d else res
    if reduced_labelled:
        res = torch.full(res.shape, CONST, dtype=torch.long) if res.numel() == 1 else res
    for o in outs:
        if isinstance(o, torch.Tensor):
            state.set(o, res.reshape((1,) * (o.dim() - res.dim()) + tuple(res.shape)) if res.dim() <= o.dim() else
                      torch.full((1,) * o.dim(), CONST, dtype=torch.long))


@register_op("softmax", "log_softmax", "_softmax", "cumsum", "cumprod", "normalize")
def along_dim(state, func, name, args, kwargs, out):
    x = args[0]
    lab = state.get(x)
    d = kwargs.get("dim", args[1] if len(args) > 1 and isinstance(args[1], int) else -1)
    if name == "normalize":
        d = kwargs.get("dim", 1)
    if lab.shape[d % x.dim()] > 1:
        state.uf.mark_inexact(lab[lab >= 0], f"'{name}' across channels in {state.where(name)}")
    state.set(out, lab)


@register_op("max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
             "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
             "adaptive_max_pool2d", "adaptive_max_pool3d", "interpolate", "upsample", "upsample_nearest",
             "upsample_bilinear", "pixel_shuffle_spatial", "lp_pool2d", "max_pool2d_with_indices")
def spatial(state, func, name, args, kwargs, out):
    """Channel-wise spatial ops: dim 1 keeps its labels; labels varying over space are merged per channel."""
    x = args[0]
    outs = out if isinstance(out, (tuple, list)) else (out,)
    lab = state.get(x)
    if x.dim() < 2:
        return
    ids = consume(state.uf, lab, 1, x.shape[1], state.where(name)) if lab.shape[1] > 1 or lab.numel() > 1 else None
    if ids is None:
        res = lab
    else:
        res = ids.reshape((1, -1) + (1,) * (x.dim() - 2)) if ids.numel() > 1 else lab.reshape((1,) * x.dim())
        if ids.numel() == 1 and lab.numel() > 1:
            res = torch.full((1,) * x.dim(), int(ids[0]), dtype=torch.long)
    for o in outs:
        if isinstance(o, torch.Tensor) and o.dim() == x.dim():
            state.set(o, compress(res.expand([1] + [o.shape[1] if res.shape[1] > 1 else 1] + [1] * (o.dim() - 2))))
