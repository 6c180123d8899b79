"""CSKV decoding: block-relative RoPE (no per-token angles) equals per-token rotation; error-chosen exact tokens."""
import pytest
import torch

from prunekit.kvcache import cskv as cskv_module
from prunekit.kvcache import memory
from prunekit.kvcache.cskv import KEY_BLOCK, CSKVPress, rotate_pairs

from .test_think import ARCHS, continuation_logits, padded_batch, tiny_model


def test_rotate_pairs_matches_the_models_rope():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, 16, generator=gen)
    angles = torch.randn(2, 7, 8, generator=gen)
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    ref, _ = apply_rotary_pos_emb(x, x, cos, sin)
    torch.testing.assert_close(rotate_pairs(x, angles.cos()[:, None], angles.sin()[:, None]), ref)


def _decode(model, press, ids, mask, split, steps=3):
    """Continuation logits after a compressed prefill, then `steps` single-token decoding steps."""
    first, rest, cache = continuation_logits(model, press, ids[:, :split + 8], mask[:, :split + 8], split)
    outs = [rest]
    with torch.no_grad(), press(model):
        for i in range(steps):
            pos = split + 8 + i
            outs.append(model(ids[:, pos:pos + 1], attention_mask=mask[:, :pos + 1], past_key_values=cache).logits)
    return torch.cat(outs, dim=1), cache


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("left", [True, False])
def test_block_relative_rope_equals_per_token_rotation(arch, left, monkeypatch):
    """``q . R(p0 + t) k = (R(p0)^T q) . (R(t) k)``: latent logits through the fixed table match the per-token
    rotation of every rebuilt key, over several blocks (one partial) and padded batches."""
    monkeypatch.setattr(cskv_module, "KEY_BLOCK", 16)
    model = tiny_model(arch)
    ids, mask = padded_batch(length=80, left=left)
    ids, mask = torch.cat([ids, ids[:, :4]], 1), torch.cat([mask, torch.ones_like(mask[:, :4])], 1)
    fast = CSKVPress(k_density=0.25, v_density=0.25, window=4, sink=2, init="svd")
    slow = CSKVPress(k_density=0.25, v_density=0.25, window=4, sink=2, init="svd")
    slow.block_rope = lambda call, like: None  # the per-token path
    out_fast, cache = _decode(model, fast, ids, mask, 60)
    out_slow, _ = _decode(model, slow, ids, mask, 60)
    assert cache.layers[0].n_latent > 2 * 16 and fast._block_memo is not None and fast._block_memo[1] is not None
    valid = mask[:, 60:out_fast.shape[1] + 60].bool()
    torch.testing.assert_close(out_fast[valid], out_slow[valid], atol=2e-5, rtol=1e-5)


def test_rotary_table_is_counted_as_fixed_bytes():
    model = tiny_model("llama")
    press = CSKVPress(k_density=0.25, v_density=0.25, window=4, init="svd")
    assert memory.press_fixed_nbytes(press) == 0
    with press(model):
        factors = 4 * sum(t.numel() for layer in press.factors.layers for t in layer.values())
        half = model.config.hidden_size // model.config.num_attention_heads // 2
        assert memory.press_fixed_nbytes(press) == factors + 2 * KEY_BLOCK * half * 4


def test_error_chosen_exact_tokens_are_the_worst_reconstructed():
    model = tiny_model("llama")
    ids, mask = padded_batch(length=60, left=True)
    press = CSKVPress(k_density=0.25, v_density=0.25, window=4, sink=0, init="svd", exact_ratio=0.1,
                      exact_by="error")
    _, out, cache = continuation_logits(model, press, ids, mask, 44)
    layer = cache.layers[1]
    # brute force: the layer's attention input, its exact and rank-r K/V, per-token relative error
    attn = model.model.layers[1].self_attn
    hidden = {}
    def record(module, args, kwargs):
        hidden.setdefault("x", kwargs["hidden_states"])

    handle = attn.register_forward_pre_hook(record, with_kwargs=True)
    with torch.no_grad():
        model(ids[:, :44], attention_mask=mask[:, :44])
    handle.remove()
    x, f = hidden["x"], press.factors.layers[1]
    err = 0.0
    for proj, kind in ((attn.k_proj, "k"), (attn.v_proj, "v")):
        exact = x @ proj.weight.T
        approx = x @ f[f"{kind}_down"].T @ f[f"{kind}_up"].T
        err = err + (exact - approx).pow(2).sum(-1) / exact.pow(2).sum(-1).mean(-1, keepdim=True)
    err = err[:, :40].masked_fill(~mask[:, :40].bool(), float("-inf"))  # the 40 latents: all but the window's 4
    expected = err.topk(4, dim=-1).indices.sort(dim=-1).values
    assert torch.equal(layer.store["exact_idx"].long(), expected)
    # exactness does not depend on how tokens are chosen: all of them exact equals the uncompressed model
    _, ref, _ = continuation_logits(model, None, ids, mask, 44)
    allexact = CSKVPress(k_density=0.25, v_density=0.25, window=4, sink=0, init="svd", exact_ratio=0.99,
                         exact_by="error")
    _, out_all, _ = continuation_logits(model, allexact, ids, mask, 44)
    valid = mask[:, 44:].bool()
    torch.testing.assert_close(out_all[valid], ref[valid], atol=2e-5, rtol=1e-5)
