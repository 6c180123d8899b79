"""nn.Linear (and nn.Bilinear refused)."""
from __future__ import annotations

from torch import nn

from ..labels import along, consume
from . import first_output, input_tensor, register_layer


@register_layer(nn.Linear)
class LinearRule:
    def propagate(self, state, name, m, args, kwargs, output):
        x, out = input_tensor(args, kwargs), first_output(output)
        in_ids = consume(state.uf, state.get(x), -1, x.shape[-1], f"module '{name}'")
        state.member(name, "weight", 1, in_ids, "in")
        out_ids = state.new_channels(m.out_features, tags={"signature": f"Linear:{m.in_features}"})
        state.member(name, "weight", 0, out_ids, "out")
        if m.bias is not None:
            state.member(name, "bias", 0, out_ids, "out")
        state.set(out, along(out_ids, out.dim() - 1, out.dim()))

    def fixup(self, m, old_shapes):
        m.out_features, m.in_features = m.weight.shape
