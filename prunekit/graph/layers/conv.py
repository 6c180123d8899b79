"""Convolutions (1d/2d/3d, grouped, depthwise) and transposed convolutions."""
from __future__ import annotations

import torch
from torch import nn

from ..labels import along, consume
from . import first_output, input_tensor, register_layer


def _tags(state, module, out):
    tags = {"signature": f"{type(module).__name__}:k{module.kernel_size}:s{module.stride}:g{module.groups > 1}"}
    if state.input_hw and out.dim() == 4:
        tags["scale"] = max(1, round(state.input_hw / out.shape[-1]))
    return tags


@register_layer(nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
class ConvRule:
    """Weights are [out, in/groups, ...] ([in, out/groups, ...] when transposed).

    groups == 1: inputs are consumed, outputs are new channels. Depthwise (groups == in == out): channel c in is
    channel c out. Other grouped convs: every group keeps its width, so in- and out-channels are each removed in
    lockstep across groups (the group count is a constant of the module).
    """

    def propagate(self, state, name, m, args, kwargs, output):
        x, out = input_tensor(args, kwargs), first_output(output)
        transposed = isinstance(m, nn.modules.conv._ConvTransposeNd)
        in_dim, out_dim = (0, 1) if transposed else (1, 0)
        cin, cout, g = m.in_channels, m.out_channels, m.groups
        in_ids = consume(state.uf, state.get(x), 1, x.shape[1], f"module '{name}'")
        if g == 1:
            state.member(name, "weight", in_dim, in_ids, "in")
            out_ids = state.new_channels(cout, tags=_tags(state, m, out))
        elif g == cin == cout and not transposed:
            out_ids = in_ids.clone()
            fresh = out_ids < 0
            if fresh.any():  # a depthwise conv on constant input creates its own channels
                out_ids[fresh] = state.new_channels(int(fresh.sum()))
            state.uf.pin(out_ids[fresh], f"depthwise conv '{name}' on constant input")
        else:
            per_in, per_out = cin // g, cout // g
            blocks = in_ids.reshape(g, per_in)
            for k in range(1, g):
                state.uf.union_pairs(blocks[0], blocks[k])
            out_ids = state.new_channels(cout, tags=_tags(state, m, out))
            ob = out_ids.reshape(g, per_out)
            for k in range(1, g):
                state.uf.union_pairs(ob[0], ob[k])
            # the weight's input dim holds per-group positions: position j of group k is input k*per_in + j
            state.member(name, "weight", in_dim, blocks[0], "in")
        state.member(name, "weight", out_dim, out_ids, "out")
        if m.bias is not None:
            state.member(name, "bias", 0, out_ids, "out")
        state.set(out, along(out_ids, 1, out.dim()))

    def fixup(self, m, old_shapes):
        transposed = isinstance(m, nn.modules.conv._ConvTransposeNd)
        w = m.weight
        old_in = m.in_channels
        if transposed:
            m.in_channels, m.out_channels = w.shape[0], w.shape[1] * m.groups
        elif m.groups == old_in == m.out_channels:  # depthwise
            m.in_channels = m.out_channels = m.groups = w.shape[0]
        else:
            m.in_channels, m.out_channels = w.shape[1] * m.groups, w.shape[0]
