"""nn.Embedding and nn.PReLU."""
from __future__ import annotations

from torch import nn

from ..labels import along, consume
from . import first_output, input_tensor, register_layer


@register_layer(nn.Embedding)
class EmbeddingRule:
    def propagate(self, state, name, m, args, kwargs, output):
        out = first_output(output)
        ids = state.new_channels(m.embedding_dim, tags={"signature": "Embedding"})
        state.member(name, "weight", 1, ids, "out")
        state.set(out, along(ids, out.dim() - 1, out.dim()))

    def fixup(self, m, old_shapes):
        m.embedding_dim = m.weight.shape[1]


@register_layer(nn.PReLU)
class PReLURule:
    def propagate(self, state, name, m, args, kwargs, output):
        x, out = input_tensor(args, kwargs), first_output(output)
        lab = state.get(x)
        if m.num_parameters > 1:
            ids = consume(state.uf, lab, 1, x.shape[1], f"module '{name}'")
            state.member(name, "weight", 0, ids, "norm")
            lab = along(ids, 1, x.dim())
        state.set(out, lab)

    def fixup(self, m, old_shapes):
        m.num_parameters = m.weight.numel()
