"""ThinK press: exactness at ratio 0, the channel score, compact attention vs zero-filled keys, kvpress parity."""
import pytest
import torch

from prunekit.kvcache.base import SelectedKVLayer
from prunekit.kvcache.eviction import HeavyHitterEviction
from prunekit.kvcache.hf_compat import UnsupportedModelError, new_cache
from prunekit.kvcache.kept_channels import KeptChannelLayer
from prunekit.kvcache.think import ThinKPress, think_key_scores

ARCHS = ("llama", "qwen2", "mistral")


def tiny_model(arch: str = "llama", layers: int = 2) -> torch.nn.Module:
    """A small GQA model (4 heads, 2 KV heads, head_dim 16), from prunekit.models.hf when it provides one."""
    try:
        from prunekit.models import hf

        model = getattr(hf, f"tiny_{arch}")(pretrained=False)
        if model.config.num_key_value_heads < model.config.num_attention_heads:
            return model.eval()
    except (ImportError, AttributeError):
        pass
    import transformers

    config_cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config,
                  "mistral": transformers.MistralConfig}[arch]
    model_cls = {"llama": transformers.LlamaForCausalLM, "qwen2": transformers.Qwen2ForCausalLM,
                 "mistral": transformers.MistralForCausalLM}[arch]
    torch.manual_seed(0)
    config = config_cls(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0)
    return model_cls(config).eval()


def padded_batch(length: int = 48, pad: int = 7, left: bool = True, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 256, (2, length), generator=gen)
    mask = torch.ones_like(ids)
    if left:
        mask[1, :pad] = 0
    else:
        mask[1, -pad:] = 0
    ids[mask == 0] = 0
    return ids, mask


def continuation_logits(model, press, ids, mask, split):
    """Prefill ``ids[:, :split]`` (compressed when a press is given), then score the rest over that cache."""
    cache = new_cache(model)
    ctx = press(model) if press is not None else torch.no_grad()
    with torch.no_grad(), ctx:
        first = model(ids[:, :split], attention_mask=mask[:, :split], past_key_values=cache).logits
        rest = model(ids[:, split:], attention_mask=mask, past_key_values=cache).logits
    return first, rest, cache


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("left", [True, False])
def test_ratio_zero_matches_uncompressed(arch, left):
    model = tiny_model(arch)
    ids, mask = padded_batch(left=left)
    ref_first, ref_rest, _ = continuation_logits(model, None, ids, mask, 36)
    press = ThinKPress(key_ratio=0.0, recent_size=8, window_size=8)
    first, rest, cache = continuation_logits(model, press, ids, mask, 36)
    assert isinstance(cache.layers[0], KeptChannelLayer)
    assert cache.get_seq_length() == 48
    valid = mask[:, 36:].bool()
    torch.testing.assert_close(first, ref_first, atol=1e-5, rtol=0)
    torch.testing.assert_close(rest[valid], ref_rest[valid], atol=1e-5, rtol=1e-5)


def assert_generate_unchanged(model, press, length: int, new_tokens: int) -> None:
    """Greedy generation on a left-padded batch gives the same tokens with `press` as without it."""
    ids, mask = padded_batch(length=length)
    with torch.no_grad():
        ref = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        with press(model):
            out = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                                 pad_token_id=0)
    assert torch.equal(ref, out)


@pytest.mark.parametrize("arch", ARCHS)
def test_ratio_zero_generate_is_identical(arch):
    assert_generate_unchanged(tiny_model(arch), ThinKPress(key_ratio=0.0, recent_size=8, window_size=8), 48, 12)


def test_channel_score_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    bsz, kv_heads, groups, w, n, dim = 2, 2, 3, 5, 7, 6
    query = torch.randn(bsz, kv_heads * groups, w, dim, generator=gen, dtype=torch.float64)
    keys = torch.randn(bsz, kv_heads, n, dim, generator=gen, dtype=torch.float64)
    scores = think_key_scores(query, torch.ones(bsz, w, dtype=torch.float64), keys)
    brute = torch.zeros(bsz, kv_heads, dim, dtype=torch.float64)
    for b in range(bsz):
        for h in range(kv_heads):
            for i in range(dim):
                for g in range(groups):
                    q = query[b, h * groups + g, :, i]
                    brute[b, h, i] += torch.linalg.matrix_norm(torch.outer(q, keys[b, h, :, i])) ** 2
    torch.testing.assert_close(scores * (w * n * groups), brute)
    # padding rows and padded keys are left out of the energies
    weight = torch.ones(bsz, w, dtype=torch.float64)
    weight[:, :2] = 0
    valid = torch.ones(bsz, kv_heads, n, dtype=torch.bool)
    valid[..., -3:] = False
    masked = think_key_scores(query, weight, keys, valid)
    torch.testing.assert_close(masked, think_key_scores(query[:, :, 2:], weight[:, 2:], keys[:, :, :-3]))


def _zero_filled_reference(model, cache_c, ids, split, kind, n_old):
    """Uncompressed run whose cached old keys/values have the dropped channels zeroed (kvpress-style)."""
    cache = new_cache(model)
    with torch.no_grad():
        model(ids[:, :split], past_key_values=cache)
        for layer, comp in zip(cache.layers, cache_c.layers):
            index = comp.store[f"{kind}_idx"].long()
            tensor = layer.keys if kind == "k" else layer.values
            keep = torch.zeros(tensor.shape[0], tensor.shape[1], tensor.shape[3], dtype=torch.bool)
            keep.scatter_(-1, index, True)
            tensor[:, :, :n_old] *= keep[:, :, None, :]
        return model(ids[:, split:], past_key_values=cache).logits


@pytest.mark.parametrize("kind", ["k", "v"])
def test_compact_attention_equals_zero_filled_cache(kind):
    model = tiny_model("llama")
    ids = torch.randint(1, 256, (1, 60), generator=torch.Generator().manual_seed(3))
    press = ThinKPress(key_ratio=0.5 if kind == "k" else 0.0, value_ratio=0.5 if kind == "v" else 0.0,
                       recent_size=8, window_size=8)
    _, rest, cache = continuation_logits(model, press, ids, torch.ones_like(ids), 44)
    layer = cache.layers[0]
    if kind == "k":  # the SDPA layout: kept channels of all 60 tokens, the other 8 for the 8 recent + 16 scored
        assert isinstance(layer, KeptChannelLayer)
        assert layer.store["k_kept"].shape == (1, 2, 60, 8) and layer.store["k_rest"].shape == (1, 2, 24, 8)
    else:  # value pruning: the general compact layout, recent 8 kept apart
        assert isinstance(layer, SelectedKVLayer) and layer.store["v_old"].shape == (1, 2, 36, 8)
    ref = _zero_filled_reference(model, cache, ids, 44, kind, n_old=36)
    torch.testing.assert_close(rest, ref, atol=1e-5, rtol=1e-5)
    full = continuation_logits(model, None, ids, torch.ones_like(ids), 44)[1]
    assert (rest - full).abs().max() > 1e-4  # pruning changed something


def test_matches_kvpress_think_with_no_recent_window():
    kvpress = pytest.importorskip("kvpress")
    model = tiny_model("llama")
    ids = torch.randint(1, 256, (1, 70), generator=torch.Generator().manual_seed(5))
    cache = new_cache(model)
    with torch.no_grad():
        with kvpress.ThinKPress(key_channel_compression_ratio=0.5)(model):
            model(ids[:, :50], past_key_values=cache)
        ref = model(ids[:, 50:], past_key_values=cache).logits
    ours = continuation_logits(model, ThinKPress(key_ratio=0.5, recent_size=0), ids, torch.ones_like(ids), 50)[1]
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-5)


def test_eviction_keeps_recent_plus_heavy_hitters():
    model = tiny_model("llama")
    ids, mask = padded_batch(length=64)
    press = ThinKPress(key_ratio=0.25, recent_size=8, window_size=8,
                       eviction=HeavyHitterEviction(token_ratio=0.5, kernel=1))
    _, rest, cache = continuation_logits(model, press, ids, mask, 48)
    store = cache.layers[1].store
    assert store["slots"].shape == (2, 2, 16)  # 24 kept of 48 prompt tokens, 8 of them recent
    assert store["k_old"].shape == (2, 2, 16, 12)
    assert store["k_new"].shape[2] == 8 + 16
    assert bool((store["slots"] < 40).all()) and bool((store["slots"][:, :, 1:] > store["slots"][:, :, :-1]).all())
    assert not bool((store["slots"][1] < 7).any())  # padding (left, 7 slots) is never a heavy hitter
    assert torch.isfinite(rest).all()


def test_unsupported_architecture_and_evicted_cache_outside_the_context_raise():
    import transformers

    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel"):
        with ThinKPress()(gpt2):
            pass
    model = tiny_model("llama")
    ids = torch.randint(1, 256, (1, 40))
    cache = new_cache(model)
    with torch.no_grad():
        with ThinKPress(key_ratio=0.5, recent_size=4, eviction=HeavyHitterEviction(token_ratio=0.5))(model):
            model(ids, past_key_values=cache)
        with pytest.raises(Exception, match="press context"):
            model(ids[:, :1], past_key_values=cache)
    assert "forward" not in vars(model.model.layers[0].self_attn)  # the patch is gone
