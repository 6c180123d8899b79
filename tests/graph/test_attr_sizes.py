"""Sizes read from module and config attributes (`graph.attrs`, `graph.attr_solve`): fused projections sliced or
reshaped with head counts from attributes are pruned by heads with the attributes (and the Hugging Face config)
rewritten, groups sharing a config value move together, and what cannot follow is refused with the reason."""
import copy
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit
from prunekit.allocate.base import apply_constraints
from prunekit.errors import ConfigError
from prunekit.graph.types import Allocation, ChannelGroup, GroupMember
from prunekit.prune.hf_config import _shapes_config_cannot_describe

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _zoo_models import build_hf_extra  # noqa: E402

torch.set_num_threads(1)


def _inputs():
    gen = torch.Generator().manual_seed(0)
    return torch.randint(1, 100, (2, 12), generator=gen), torch.randint(1, 100, (1, 7), generator=gen)


def _head_groups(an, suffix):
    return [g for g in an.groups if g.id.endswith(suffix)]


def test_phi3_qkv_split_at_config_offsets_pruned_uniformly_and_config_rewritten():
    """Phi-3 slices ``qkv_proj`` at ``config.num_attention_heads * head_dim``: one config value for every layer, so
    the layers' head groups form one class that loses equally many heads, and the config describes the result."""
    model = build_hf_extra("hf_tiny_phi3").eval()
    ids, held_out = _inputs()
    an = prunekit.analyze(model, ids)
    heads = _head_groups(an, "qkv_proj")
    assert len(heads) == 2 and all(g.prunable and g.size == 2 for g in heads)  # units: one kv head + its 2 q heads
    assert len({g.tags["tied"] for g in heads}) == 1 and "config.num_attention_heads" in heads[0].tags["tied_by"]
    keys = {rw.key for rw in an.attributes}
    assert {"config.num_attention_heads", "model.layers.0.self_attn.num_key_value_heads"} <= keys
    ranked = prunekit.plan(model, ids, ratio=0.5, analysis=an, criterion="l2", allocator="global")
    counts = [len(ranked.removed.get(g.id, [])) for g in heads]
    assert counts[0] == counts[1], counts  # a global ranking still moves the class together
    plan = prunekit.plan(model, ids, ratio=0.5, analysis=an)
    pruned = prunekit.apply(model, plan, ids, held_out=held_out)
    assert pruned.prunekit_verification.passed and max(pruned.prunekit_verification.errors) < 1e-4
    cfg = pruned.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (2, 1) and model.config.num_attention_heads == 4
    assert pruned.model.layers[1].self_attn.qkv_proj.out_features == (2 + 1 + 1) * 16
    # the rewritten config rebuilds the pruned shapes exactly, and the rebuilt model computes the same outputs
    assert _shapes_config_cannot_describe(pruned) == [] and not hasattr(cfg, "prunekit_nonuniform")
    rebuilt = type(pruned)(copy.deepcopy(cfg)).eval()
    rebuilt.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        assert torch.allclose(rebuilt(held_out).logits, pruned(held_out).logits, atol=1e-6)


def test_plan_breaking_a_tied_class_is_refused_naming_the_attribute():
    model = build_hf_extra("hf_tiny_phi3").eval()
    ids, _ = _inputs()
    an = prunekit.analyze(model, ids)
    plan = prunekit.plan(model, ids, ratio=0.5, analysis=an)
    first, second = _head_groups(an, "qkv_proj")
    plan.removed[first.id], plan.removed[second.id] = [0], []
    with pytest.raises(ConfigError, match="num_attention_heads.*equally many"):
        prunekit.apply(model, plan, ids, analysis=an)


def test_allocator_moves_a_tied_class_together():
    def group(gid, size=4):
        return ChannelGroup(gid, size, [GroupMember(gid, "weight", 0, torch.arange(size)[:, None])],
                            tags={"tied": "a", "tied_by": "cfg.heads"})

    groups = [group("a"), group("b"), group("c", 6)]
    out = apply_constraints(groups, Allocation({"a": 3, "b": 1, "c": 2}))
    assert dict(out) == {"a": 1, "b": 1, "c": 1}
    out = apply_constraints(groups, Allocation({"a": 2, "b": 2, "c": 3}), round_to=2)  # kept counts stay even
    assert dict(out) == {"a": 2, "b": 2, "c": 2}


def test_falcon_heads_from_attribute_reshapes_pruned_and_reloaded(tmp_path):
    """Falcon reshapes its fused qkv with ``view(b, t, self.num_heads, 3, self.head_dim)``: pruned by heads, each
    layer's ``num_heads`` rewritten; the config cannot say it (hidden_size fixes the head size), so it reloads
    through `prunekit.load`."""
    model = build_hf_extra("hf_tiny_falcon").eval()
    ids, held_out = _inputs()
    an = prunekit.analyze(model, ids)
    heads = _head_groups(an, "query_key_value")
    assert len(heads) == 2 and all(g.prunable and g.size == 4 and "tied" not in g.tags for g in heads)
    plan = prunekit.plan(model, ids, ratio=0.5, analysis=an)
    pruned = prunekit.apply(model, plan, ids, held_out=held_out)
    assert pruned.prunekit_verification.passed and max(pruned.prunekit_verification.errors) < 1e-4
    attn = pruned.transformer.h[0].self_attention
    assert (attn.num_heads, attn.query_key_value.out_features, attn.dense.in_features) == (2, 96, 32)
    prunekit.save(pruned, plan, tmp_path)
    again = prunekit.load(tmp_path)
    with torch.no_grad():
        assert torch.equal(again(held_out).logits, pruned(held_out).logits)


def test_distilbert_head_count_attribute_rewritten_and_reloaded(tmp_path):
    """DistilBERT's forward reshapes with -1 and never reads ``n_heads``; the attribute still follows the pruned
    heads, and the model runs, verifies, saves and reloads."""
    model = build_hf_extra("hf_tiny_distilbert").eval()
    ids, held_out = _inputs()
    plan = prunekit.plan(model, ids, ratio=0.5)
    pruned = prunekit.apply(model, plan, ids, held_out=held_out)
    assert pruned.prunekit_verification.passed and max(pruned.prunekit_verification.errors) < 1e-4
    attn = pruned.distilbert.transformer.layer[0].attention
    assert (attn.n_heads, attn.q_lin.out_features, attn.attention_head_size) == (2, 32, 16)
    assert model.distilbert.transformer.layer[0].attention.n_heads == 4
    prunekit.save(pruned, plan, tmp_path)
    again = prunekit.load(tmp_path)
    assert again.distilbert.transformer.layer[1].attention.n_heads == 2
    with torch.no_grad():
        assert torch.equal(again(held_out).logits, pruned(held_out).logits)


def test_falcon_grouped_query_ratio_of_attributes_kept():
    """New-architecture Falcon reshapes with ``self.num_heads // self.num_kv_heads + 2``: the ratio stays a constant
    of the code, so both attributes are rewritten together (one key-value head with its query heads per unit)."""
    model = build_hf_extra("hf_tiny_falcon_gqa").eval()
    ids, held_out = _inputs()
    pruned = prunekit.apply(model, prunekit.plan(model, ids, ratio=0.5), ids, held_out=held_out)
    assert pruned.prunekit_verification.passed and max(pruned.prunekit_verification.errors) < 1e-4
    attn = pruned.transformer.h[1].self_attention
    assert (attn.num_heads, attn.num_kv_heads, attn.query_key_value.out_features) == (2, 1, (2 + 2) * 16)


class _AttrAttention(nn.Module):
    """q, k, v sliced at ``self.q_size`` offsets; `use` adds a second use of q_size that cannot follow a rewrite
    (``"scale"``) or slices only part of the heads (``"partial"``)."""

    def __init__(self, use: str = ""):
        super().__init__()
        self.use, self.q_size, self.head_dim, self.part = use, 32, 8, 16
        self.qkv, self.out = nn.Linear(32, 96), nn.Linear(32, 32)

    def forward(self, x):
        b, t, _ = x.shape
        qkv = self.qkv(x)
        q, k, v = qkv[..., :self.q_size], qkv[..., self.q_size:2 * self.q_size], qkv[..., 2 * self.q_size:]
        if self.use == "scale":
            q = q / math.sqrt(self.q_size)  # a scale from the width: it would change with a rewrite
        if self.use == "partial":
            q = torch.cat([q[..., :self.part] * 2, q[..., self.part:]], -1)
        q, k, v = (p.view(b, t, -1, self.head_dim).transpose(1, 2) for p in (q, k, v))
        return self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, -1))


def test_attribute_offsets_pruned_and_uses_that_cannot_follow_refused():
    x, held_out = torch.randn(2, 5, 32), torch.randn(1, 3, 32)
    model = _AttrAttention().eval()
    pruned = prunekit.apply(model, prunekit.plan(model, x, ratio=0.5), x, held_out=held_out)
    assert pruned.prunekit_verification.passed and pruned.q_size == 16 and pruned.head_dim == 8
    scaled = prunekit.analyze(_AttrAttention("scale").eval(), x).group("qkv")
    assert not scaled.prunable and any("'q_size' is fixed" in r and "float" in r for r in scaled.reasons), \
        scaled.reasons
    partial = prunekit.analyze(_AttrAttention("partial").eval(), x).group("qkv")
    assert not partial.prunable
    assert any("part" in r and "only some of the units" in r for r in partial.reasons), partial.reasons
