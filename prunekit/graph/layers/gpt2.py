"""GPT-2's Conv1D (a linear layer with a transposed [in, out] weight) and its fused-qkv attention."""
from __future__ import annotations

from torch import nn

from ..labels import along, consume
from . import first_output, input_tensor, register_layer_predicate


def _is_conv1d(m: nn.Module) -> bool:
    return type(m).__name__ == "Conv1D" and hasattr(m, "nf") and getattr(m, "weight", None) is not None


def _is_gpt2_attention(m: nn.Module) -> bool:
    return _is_conv1d(getattr(m, "c_attn", None) or nn.Identity()) and _is_conv1d(getattr(m, "c_proj", None) or
                                                                                  nn.Identity()) \
        and isinstance(getattr(m, "num_heads", None), int) and not getattr(m, "is_cross_attention", False)


@register_layer_predicate(_is_conv1d)
class Conv1DRule:
    def propagate(self, state, name, m, args, kwargs, output):
        x, out = input_tensor(args, kwargs), first_output(output)
        in_ids = consume(state.uf, state.get(x), -1, x.shape[-1], f"module '{name}'")
        state.member(name, "weight", 0, in_ids, "in")
        out_ids = state.new_channels(m.nf, tags={"signature": "Conv1D"})
        state.member(name, "weight", 1, out_ids, "out")
        state.member(name, "bias", 0, out_ids, "out")
        state.set(out, along(out_ids, out.dim() - 1, out.dim()))

    def fixup(self, m, old_shapes):
        m.nf = m.weight.shape[1]


@register_layer_predicate(_is_gpt2_attention)
class GPT2AttentionRule:
    """Fused qkv: c_attn's output is [q | k | v], each num_heads * head_dim wide; a head owns its slice of each."""

    def propagate(self, state, name, m, args, kwargs, output):
        x, out = input_tensor(args, kwargs), first_output(output)
        h, d = m.num_heads, m.head_dim
        hidden = consume(state.uf, state.get(x), -1, x.shape[-1], f"module '{name}'")
        state.member(f"{name}.c_attn", "weight", 0, hidden, "in")
        heads = state.new_channels(h, unit="head", tags={"kind": "attention", "signature": f"gpt2attn:{d}"})
        per = heads.repeat_interleave(d)
        qkv = per.repeat(3)
        state.member(f"{name}.c_attn", "weight", 1, qkv, "out")
        state.member(f"{name}.c_attn", "bias", 0, qkv, "out")
        state.member(f"{name}.c_proj", "weight", 0, per, "in")
        out_ids = state.new_channels(m.c_proj.nf, tags={"signature": "Conv1D:attn_out"})
        state.member(f"{name}.c_proj", "weight", 1, out_ids, "out")
        state.member(f"{name}.c_proj", "bias", 0, out_ids, "out")
        state.set(out, along(out_ids, out.dim() - 1, out.dim()))

    def fixup(self, m, old_shapes):
        for c in (m.c_attn, m.c_proj):
            c.nf = c.weight.shape[1]
        m.num_heads = m.c_proj.weight.shape[0] // m.head_dim
        m.split_size = m.num_heads * m.head_dim
        m.embed_dim = m.c_attn.weight.shape[0]
