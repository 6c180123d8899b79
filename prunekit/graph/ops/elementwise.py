"""Element-wise operations: unary ops pass labels through; n-ary ops couple channels where shapes correspond."""
from __future__ import annotations

import torch

from ..labels import CONST, compress
from . import register_op

UNARY = (
    "relu", "relu6", "silu", "gelu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "hardtanh", "leaky_relu", "elu",
    "selu", "celu", "mish", "softplus", "softsign", "logsigmoid", "neg", "__neg__", "abs", "exp", "log", "sqrt",
    "rsqrt", "reciprocal", "sin", "cos", "square", "erf", "dropout", "dropout1d", "dropout2d", "dropout3d",
    "alpha_dropout", "feature_alpha_dropout", "clamp", "clip", "clamp_min", "clamp_max", "contiguous", "clone",
    "detach", "float", "half", "double", "bfloat16", "to", "type", "type_as", "requires_grad_", "zeros_like",
    "ones_like", "empty_like", "full_like", "rand_like", "randn_like", "nan_to_num", "sign", "floor", "ceil", "round",
    "__getattribute__", "cpu", "cuda", "threshold", "tanhshrink", "hardshrink", "softshrink", "pow_scalar",
)


@register_op(*UNARY)
def unary(state, func, name, args, kwargs, out):
    if isinstance(out, torch.Tensor) and args and isinstance(args[0], torch.Tensor):
        if out.shape == args[0].shape:
            state.set(out, state.get(args[0]))
        else:
            state.unknown(name, [args[0]])


BINARY = (
    "add", "__add__", "__radd__", "__iadd__", "sub", "__sub__", "__rsub__", "__isub__", "mul", "__mul__", "__rmul__",
    "__imul__", "div", "__truediv__", "__rtruediv__", "__itruediv__", "true_divide", "maximum", "minimum", "where",
    "pow", "__pow__", "__rpow__", "addcmul", "addcdiv", "lerp", "masked_fill", "fmod", "remainder", "floor_divide",
    "__floordiv__", "atan2", "hypot", "copysign", "logaddexp",
)


@register_op(*BINARY)
def binary(state, func, name, args, kwargs, out):
    """Broadcasting element-wise op: channels at the same output position are coupled.

    An operand whose labels do not vary and which the op broadcasts along a dim where another operand's channels
    vary couples nothing: a [B,1,H,W] mask times a [B,C,H,W] feature map leaves the feature channels free. A channel
    meeting constant content of full size (a tensor the engine cannot slice) is pinned.
    """
    if not isinstance(out, torch.Tensor):
        return
    operands = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
    shape = tuple(out.shape)
    nd = len(shape)
    aligned = []
    for t in operands:
        lab = state.get(t)
        lab = lab.reshape((1,) * (nd - lab.dim()) + tuple(lab.shape))
        real = (1,) * (nd - t.dim()) + tuple(t.shape)
        aligned.append((lab, real))
    included = []
    units = [compress(state.uf.roots(lab)) if bool((lab >= 0).any()) else lab for lab, _ in aligned]
    for i, (lab, real) in enumerate(aligned):
        others_vary = {d for j, (l2, _) in enumerate(aligned) if j != i for d in range(nd) if l2.shape[d] > 1}
        broadcast = {d for d in range(nd) if real[d] == 1 and shape[d] != 1}
        own_vary = [d for d in range(nd) if lab.shape[d] > 1]
        if broadcast & others_vary and not own_vary:
            continue  # a broadcast scalar-per-position tensor: no channel correspondence
        others = [u for j, u in enumerate(units) if j != i and bool((u >= 0).any())]
        if own_vary and others and any(u.shape[d] > 1 for u in others for d in broadcast) and \
                all(u.shape[d] == 1 for u in others for d in own_vary):
            # the other operands' units are whole slices along this one's dims (heads times rotary tables):
            # removing a unit never removes a position of this operand, which therefore cannot lose any
            state.uf.pin(lab[lab >= 0], f"broadcast against whole units by {state.where(name)}")
            continue
        included.append(lab)
    if not included:
        state.set(out, torch.full((1,) * nd, CONST, dtype=torch.long))
        return
    target = [max(int(l.shape[d]) for l in included) for d in range(nd)]
    result = torch.full(target, CONST, dtype=torch.long)
    have = torch.zeros(target, dtype=torch.bool)
    for lab in included:
        lab = lab.expand(target)
        named = lab >= 0
        both = named & have
        if both.any():
            state.uf.union_pairs(result[both], lab[both])
        result = torch.where(named & ~have, lab, result)
        have = have | named
    for lab in included:
        clash = (lab.expand(target) == CONST) & have
        if clash.any():
            state.uf.pin(result[clash], f"channel combined with constant content by {state.where(name)}")

    state.set(out, compress(result))


@register_op("index_add", "index_reduce")
def index_add(state, func, name, args, kwargs, out):
    """``out = self; out[index] += source`` along `dim` (tokens routed to an expert, say): where `dim` holds no
    channels, position c of `source` lands on position c of `self`, as in an addition."""
    x = args[0]
    d = args[1] if len(args) > 1 else kwargs.get("dim")
    source = args[3] if len(args) > 3 else kwargs.get("source")
    if not isinstance(out, torch.Tensor) or not isinstance(source, torch.Tensor) or not isinstance(d, int):
        return state.unknown(name, [t for t in (x, source) if isinstance(t, torch.Tensor)])
    labs = [state.get(x), state.get(source)]
    if any(lab.dim() > d % x.dim() and lab.shape[d % x.dim()] > 1 for lab in labs):
        return state.unknown(name, [x, source])  # scattering along a channel dim
    binary(state, func, name, (x, source), {}, out)
