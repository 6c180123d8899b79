"""Attention blocks: Hugging Face style (separate q/k/v projections, GQA) and torch's nn.MultiheadAttention.

Whole heads are the units. With grouped-query attention a unit is one key-value head together with the query heads
that read it, so the ratio of query to key-value heads never changes. head_dim is not pruned: rotary embeddings and
fused kernels tie it to constants.
"""
from __future__ import annotations

import torch
from torch import nn

from ..labels import along, consume
from . import first_output, input_tensor, register_layer, register_layer_predicate

_QKV_NAMES = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"))
_OUT_NAMES = ("o_proj", "out_proj")
_HEAD_ATTRS = ("num_heads", "num_attention_heads", "n_heads")
_PER_HEAD_PARAMS = ("relative_position_bias_table",)


def _qkv(m):
    for names in _QKV_NAMES:
        mods = [getattr(m, n, None) for n in names]
        if all(isinstance(x, nn.Linear) for x in mods):
            return names, mods
    return None, None


def _head_dim(m, q: nn.Linear):
    for attr in ("head_dim", "attention_head_size", "head_size"):
        v = getattr(m, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    for attr in _HEAD_ATTRS:
        v = getattr(m, attr, None)
        if isinstance(v, int) and v > 0:
            return q.out_features // v
    cfg = getattr(m, "config", None)
    if cfg is not None and getattr(cfg, "num_attention_heads", None):
        return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return None


def _is_hf_attention(m: nn.Module) -> bool:
    """q/k/v projections and a head size, and no other child holding tensors (a norm over the projected heads,
    say): blocks with more are traced through their operations instead (`graph.ops.product`)."""
    names, mods = _qkv(m)
    if names is None or _head_dim(m, mods[0]) is None:
        return False
    known = set(names) | set(_OUT_NAMES)
    return not any(n not in known and any(True for _ in child.parameters()) for n, child in m.named_children())


@register_layer_predicate(_is_hf_attention)
class HFAttentionRule:
    def propagate(self, state, name, m, args, kwargs, output):
        names, (q, k, v) = _qkv(m)
        x, out = input_tensor(args, kwargs), first_output(output)
        d = _head_dim(m, q)
        hq, hkv = q.out_features // d, k.out_features // d
        rep = hq // hkv
        hidden = consume(state.uf, state.get(x), -1, x.shape[-1], f"module '{name}'")
        for n in names:
            state.member(f"{name}.{n}", "weight", 1, hidden, "in")
        heads = state.new_channels(hkv, unit="head", tags={"kind": "attention", "signature": f"attn:{d}:{rep}"})
        q_pos = heads.repeat_interleave(rep * d)
        kv_pos = heads.repeat_interleave(d)
        for n, mod, pos in ((names[0], q, q_pos), (names[1], k, kv_pos), (names[2], v, kv_pos)):
            state.member(f"{name}.{n}", "weight", 0, pos, "out")
            if mod.bias is not None:
                state.member(f"{name}.{n}", "bias", 0, pos, "out")
        for pname in _PER_HEAD_PARAMS:
            table = getattr(m, pname, None)
            if isinstance(table, torch.Tensor) and table.shape[-1] == hq:
                state.member(name, pname, table.dim() - 1, heads.repeat_interleave(rep), "norm")
        o = next((getattr(m, n) for n in _OUT_NAMES if isinstance(getattr(m, n, None), nn.Linear)), None)
        if o is None:  # the output projection lives in a sibling module: it consumes the labelled context
            state.set(out, along(q_pos, out.dim() - 1, out.dim()))
            return
        oname = next(n for n in _OUT_NAMES if getattr(m, n, None) is o)
        state.member(f"{name}.{oname}", "weight", 1, q_pos, "in")
        out_ids = state.new_channels(o.out_features, tags={"signature": "Linear:attn_out"})
        state.member(f"{name}.{oname}", "weight", 0, out_ids, "out")
        if o.bias is not None:
            state.member(f"{name}.{oname}", "bias", 0, out_ids, "out")
        state.set(out, along(out_ids, out.dim() - 1, out.dim()))

    def fixup(self, m, old_shapes):
        names, (q, k, v) = _qkv(m)
        for child in (q, k, v, *(getattr(m, n) for n in _OUT_NAMES if isinstance(getattr(m, n, None), nn.Linear))):
            child.out_features, child.in_features = child.weight.shape
        d = _head_dim_fixed(m, old_shapes, q)
        hq, hkv = q.out_features // d, k.out_features // d
        for attr in _HEAD_ATTRS:
            if isinstance(getattr(m, attr, None), int):
                setattr(m, attr, hq)
        if isinstance(getattr(m, "num_key_value_heads", None), int):
            m.num_key_value_heads = hkv
        if isinstance(getattr(m, "all_head_size", None), int):
            m.all_head_size = hq * d
        if isinstance(getattr(m, "hidden_size", None), int) and not isinstance(getattr(m, "o_proj", None), nn.Linear):
            m.hidden_size = q.in_features


def _head_dim_fixed(m, old_shapes, q):
    for attr in ("head_dim", "attention_head_size", "head_size"):
        v = getattr(m, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    heads = next((getattr(m, a) for a in _HEAD_ATTRS if isinstance(getattr(m, a, None), int)), None)
    return old_shapes["__q_out__"] // heads


@register_layer(nn.MultiheadAttention)
class MultiheadAttentionRule:
    """nn.MultiheadAttention ties its head size to embed_dim (its input and output width), so neither its heads nor
    the width it reads can shrink while it stays an nn.MultiheadAttention: its channels are pinned, with the reason."""

    def propagate(self, state, name, m, args, kwargs, output):
        reason = (f"nn.MultiheadAttention '{name}' ties embed_dim to num_heads * head_dim; "
                  "its width and heads cannot be pruned in place")
        tensors = [a for a in list(args[:3]) + [kwargs.get(k) for k in ("query", "key", "value")]
                   if isinstance(a, torch.Tensor)]
        for t in tensors:
            state.uf.pin(state.get(t), reason)
        out = first_output(output)
        ids = state.new_channels(out.shape[-1])
        state.uf.pin(ids, reason)
        state.set(out, along(ids, out.dim() - 1, out.dim()))

    def fixup(self, m, old_shapes):
        pass
