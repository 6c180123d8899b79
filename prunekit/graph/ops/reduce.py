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
    other = args[1] if len(args) > 1 else kwargs.get("other")
    if isinstance(other, torch.Tensor) and name in ("max", "min"):  # torch.max(a, b): element-wise
        from .elementwise import binary

        return binary(state, func, name, args, kwargs, out)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    lab = state.get(x)
    dims = _reduce_dims(args, kwargs, x.dim())
    reduced_labelled = [d for d in dims if lab.shape[d] > 1]
    if reduced_labelled:
        ids = lab[lab >= 0]
        if name in ("sum", "nansum", "norm"):
            pass  # zeroed channels add nothing to a sum or a norm: removal is exact
        else:  # a mean, max... over fewer channels is another function, which no masked reference reproduces
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
    exact = name == "cumsum" or (name == "normalize" and kwargs.get("p", args[1] if len(args) > 1 else 2.0) == 2.0)
    if lab.shape[d % x.dim()] > 1 and not exact:  # softmax over fewer channels is another function
        state.uf.pin(lab[lab >= 0], f"'{name}' across channels in {state.where(name)}")
    state.set(out, lab)


@register_op("max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
             "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
             "adaptive_max_pool2d", "adaptive_max_pool3d", "interpolate", "upsample", "upsample_nearest",
             "upsample_bilinear", "lp_pool2d", "max_pool2d_with_indices")
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


@register_op("pixel_shuffle", "pixel_unshuffle")
def pixel_shuffle(state, func, name, args, kwargs, out):
    """``pixel_shuffle(x, r)``: input channels c*r*r .. c*r*r + r*r - 1 become the r x r pixels of output channel c,
    so each block of r*r input channels is one unit; ``pixel_unshuffle`` is the inverse (each input channel becomes
    r*r output channels, all owned by it)."""
    x = args[0]
    r = args[1] if len(args) > 1 else kwargs.get("upscale_factor", kwargs.get("downscale_factor"))
    lab = state.get(x)
    if x.dim() < 3 or not isinstance(r, int) or lab.dim() < 3 or all(lab.shape[d] == 1 for d in range(lab.dim())):
        state.set(out, torch.full((1,) * out.dim(), CONST, dtype=torch.long))
        return
    if any(lab.shape[d] > 1 for d in range(lab.dim()) if d != lab.dim() - 3):
        return state.unknown(name, [x])  # labels varying over space
    c = x.shape[-3]
    ids = consume(state.uf, lab, -3, c, state.where(name))
    if name == "pixel_shuffle":
        blocks = ids.reshape(c // (r * r), r * r)
        for block in blocks:
            named = block[block >= 0]
            if named.numel():
                state.uf.union_all(named)
                if named.numel() < block.numel():
                    state.uf.pin(named, f"pixel block mixed with constant content in {state.where(name)}")
        new = blocks[:, 0]
    else:
        new = ids.repeat_interleave(r * r)
    shape = [1] * out.dim()
    shape[-3] = new.numel()
    state.set(out, compress(new.reshape(shape)))


@register_op("topk", "kthvalue")
def topk(state, func, name, args, kwargs, out):
    """Selecting the k largest along a dim (a router choosing experts): channels along that dim are chosen by
    value, so none can go; the values and indices keep the labels of the other dims."""
    x = args[0]
    d = kwargs.get("dim", args[2] if len(args) > 2 and isinstance(args[2], int) else -1) % max(x.dim(), 1)
    lab = state.get(x)
    lab = lab.reshape((1,) * (x.dim() - lab.dim()) + tuple(lab.shape))
    if lab.shape[d] > 1:
        state.uf.pin(lab[lab >= 0], f"'{name}' selects positions by value along channels in {state.where(name)}")
        lab = torch.full((1,) * x.dim(), CONST, dtype=torch.long)
    for o in (out if isinstance(out, (tuple, list)) else (out,)):
        if isinstance(o, torch.Tensor) and o.dim() == lab.dim():
            state.set(o, lab)
