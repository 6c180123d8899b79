"""CSKV press: exactness at full rank, SVD optimality, quantisation, training and save/load."""
import pytest
import torch

from prunekit.errors import CheckpointError, ConfigError
from prunekit.kvcache import cskv_train
from prunekit.kvcache.cskv import CSKVFactors, CSKVPress, LatentLayer, svd_factors, window_length
from prunekit.kvcache.hf_compat import new_cache
from prunekit.kvcache.quant import cat_tokens, fake_quantize, quantize

from .test_think import ARCHS, assert_generate_unchanged, continuation_logits, padded_batch, tiny_model


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("left", [True, False])
@pytest.mark.parametrize("sink", [0, 4])
def test_full_rank_matches_uncompressed(arch, left, sink):
    model = tiny_model(arch)
    ids, mask = padded_batch(length=60, left=left)
    _, ref, _ = continuation_logits(model, None, ids, mask, 44)
    press = CSKVPress(k_density=1.0, v_density=1.0, window=4, sink=sink, init="svd")
    _, out, cache = continuation_logits(model, press, ids, mask, 44)
    layer = cache.layers[0]
    assert isinstance(layer, LatentLayer) and layer.n_latent > 0 and layer.n_sink == sink
    valid = mask[:, 44:].bool()
    torch.testing.assert_close(out[valid], ref[valid], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_full_rank_generate_is_identical(arch):
    press = CSKVPress(k_density=1.0, v_density=1.0, window=4, init="svd")
    assert_generate_unchanged(tiny_model(arch), press, 40, 20)


def test_sink_tokens_are_stored_exactly():
    """Low rank with a sink: the first tokens' keys/values are stored as the model computed them (not through the
    low-rank factors), and they are counted in the cache's storage."""
    model = tiny_model("llama")
    ids = torch.randint(1, 256, (1, 40), generator=torch.Generator().manual_seed(3))
    press = CSKVPress(k_density=0.25, v_density=0.25, window=4, sink=4, init="svd")
    cache = continuation_logits(model, press, ids, torch.ones_like(ids), 30)[2]
    layer = cache.layers[0]
    assert layer.n_sink == 4 and layer.store["k_sink"].shape[2] == 4
    assert layer.nbytes() >= layer.store["k_sink"].numel() * 4 * 2
    with torch.no_grad():
        full = model(ids[:, :30], use_cache=True).past_key_values
    torch.testing.assert_close(layer.store["k_sink"], full.layers[0].keys[:, :, :4])
    torch.testing.assert_close(layer.store["v_sink"], full.layers[0].values[:, :, :4])
    with pytest.raises(ConfigError, match="sink"):
        CSKVPress(sink=-1)


def test_window_flushes_whole_blocks():
    assert [window_length(t, 8) for t in (5, 15, 16, 17, 24, 70)] == [5, 15, 8, 9, 8, 14]
    assert [window_length(t, 8, blocks=False) for t in (5, 15, 70)] == [5, 8, 8]
    assert window_length(33, 0) == 0
    model = tiny_model("llama")
    ids = torch.randint(1, 256, (1, 70))
    cache = new_cache(model)
    with torch.no_grad(), CSKVPress(k_density=0.5, v_density=0.5, window=8, sink=0, bits=8, init="svd")(model):
        model(ids[:, :50], past_key_values=cache)
        assert cache.layers[0].n_latent == 40 and cache.layers[0].store["k_win"].shape[2] == 10
        for step in range(6):  # 10 + 6 = 16 window tokens -> one block of 8 is flushed
            model(ids[:, 50 + step:51 + step], past_key_values=cache)
    assert cache.layers[0].n_latent == 48 and cache.layers[0].store["k_win"].shape[2] == 8
    assert cache.layers[0].store["pos_offset"] is not None  # contiguous positions: no per-token position storage


def test_svd_factors_are_optimal_low_rank():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(24, 40, generator=gen, dtype=torch.float64)
    down, up = svd_factors(weight, 24)
    torch.testing.assert_close(up @ down, weight)
    down, up = svd_factors(weight, 6)
    tail = torch.linalg.svdvals(weight)[6:].pow(2).sum()
    torch.testing.assert_close((weight - up @ down).pow(2).sum(), tail)
    scale = torch.rand(40, generator=gen, dtype=torch.float64) + 0.5  # ASVD: optimal for the scaled weight
    down, up = svd_factors(weight, 6, scale)
    scaled_tail = torch.linalg.svdvals(weight * scale).pow(2)[6:].sum()
    torch.testing.assert_close(((weight - up @ down) * scale).pow(2).sum(), scaled_tail)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("axis", [-1, -2])
def test_group_quantisation_error_and_packed_storage(bits, axis):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 64, 38, generator=gen)
    q = quantize(x, bits, 32 if axis == -2 else 16, axis=axis)
    assert q.codes.dtype == torch.uint8
    assert q.codes.shape == (2, 64, 38 if bits == 8 else 19)  # 4 bits: two codes per byte
    groups = (2, 2, 38) if axis == -2 else (2, 64, 3)
    assert q.scale.shape == groups and q.scale.dtype == torch.float16
    deq = q.dequantize()
    step = (x.max() - x.min()) / ((1 << bits) - 1)
    assert (deq - x).abs().max() <= step / 2 + 1e-2
    both = cat_tokens(q, quantize(x[:, :32] * 2, bits, q.group_size, axis=axis))
    torch.testing.assert_close(both.dequantize()[:, :64], deq)
    fq = fake_quantize(x.clone().requires_grad_(True), bits, q.group_size, axis)
    torch.testing.assert_close(fq.detach(), deq, atol=1e-3, rtol=0)


def test_quantised_latents_stay_close_to_float_latents():
    model = tiny_model("llama")
    ids = torch.randint(1, 256, (1, 80), generator=torch.Generator().manual_seed(2))
    _, ref, _ = continuation_logits(model, CSKVPress(k_density=0.5, v_density=0.5, window=8, init="svd"), ids,
                                    torch.ones_like(ids), 64)
    errors = []
    for bits in (8, 4):
        press = CSKVPress(k_density=0.5, v_density=0.5, window=8, bits=bits, init="svd")
        _, out, _ = continuation_logits(model, press, ids,
                                        torch.ones_like(ids), 64)
        errors.append(float((out - ref).abs().max()))
    assert errors[0] < 0.02 and errors[0] < errors[1] < 0.3


@pytest.mark.parametrize("optimizer,steps", [("als", 10), ("adam", 60)])
def test_training_reduces_error_and_saved_factors_reload(tmp_path, optimizer, steps):
    model = tiny_model("llama")
    calib = torch.randint(1, 256, (4, 64), generator=torch.Generator().manual_seed(4))
    cfg = cskv_train.TrainConfig(optimizer=optimizer, steps=steps, lr=3e-3)
    factors = cskv_train.train(model, calib, 0.25, 0.25, cfg, progress=False)
    for row in factors.metadata["layers"]:
        assert row["k_after"] < row["k_before"] and row["v_after"] < row["v_before"]
    cskv_train.save(factors, tmp_path / "f")
    loaded = cskv_train.load(tmp_path / "f")
    assert loaded.metadata["k_density"] == 0.25 and len(loaded.layers) == 2
    ids = torch.randint(1, 256, (1, 50))
    a = continuation_logits(model, CSKVPress(k_density=0.25, v_density=0.25, window=4, factors=factors), ids,
                            torch.ones_like(ids), 40)[1]
    b = continuation_logits(model, CSKVPress(k_density=0.25, v_density=0.25, window=4,
                                             factors=str(tmp_path / "f")), ids, torch.ones_like(ids), 40)[1]
    torch.testing.assert_close(a, b)
    with pytest.raises(ConfigError, match="ranks"):
        with CSKVPress(k_density=0.5, v_density=0.25, factors=loaded)(model):
            pass
    with pytest.raises(CheckpointError, match="cskv.json"):
        cskv_train.load(tmp_path / "missing")


def test_als_reaches_the_closed_form_optimum():
    """ALS on the second-moment loss converges to the whitened truncated SVD (reduced-rank regression optimum)."""
    gen = torch.Generator().manual_seed(0)
    mix = torch.randn(12, 12, generator=gen, dtype=torch.float64)
    second = mix @ mix.T / 12 + 0.1 * torch.eye(12, dtype=torch.float64)
    weight = torch.randn(8, 12, generator=gen, dtype=torch.float64)
    down, up = svd_factors(weight, 3)
    layer = {"k_down": down, "k_up": up, "v_down": down.clone(), "v_up": up.clone()}
    trained = cskv_train.als_layer({"second": second}, weight, weight, layer, steps=200)
    root = torch.linalg.cholesky(second)
    sv = torch.linalg.svdvals(weight @ root)
    optimum = sv[3:].pow(2).sum() / sv.pow(2).sum()
    errors = cskv_train.relative_errors({"second": second}, weight, weight, trained)
    assert abs(errors["k"] - float(optimum)) < 1e-6
    with pytest.raises(ConfigError, match="adam"):
        cskv_train.train(tiny_model("llama"), torch.randint(1, 256, (1, 32)), 0.5, 0.5,
                         cskv_train.TrainConfig(bits=4), progress=False)


def test_quantisation_aware_training_runs_on_sampled_inputs():
    model = tiny_model("llama")
    calib = torch.randint(1, 256, (2, 64), generator=torch.Generator().manual_seed(6))
    cfg = cskv_train.TrainConfig(optimizer="adam", steps=5, bits=4, window=8, batch_tokens=64)
    factors = cskv_train.train(model, calib, 0.5, 0.5, cfg, progress=False)
    assert all(torch.isfinite(t).all() for layer in factors.layers for t in layer.values())


def test_factors_from_weights_reconstruct_projection_at_full_rank():
    model = tiny_model("qwen2")  # k/v projections with bias
    factors = CSKVFactors.from_weights(model, 32, 32)
    attn = model.model.layers[1].self_attn
    torch.testing.assert_close(factors.layers[1]["k_up"] @ factors.layers[1]["k_down"], attn.k_proj.weight,
                               atol=1e-5, rtol=1e-4)


def test_low_rank_cache_equals_reconstructed_full_cache():
    """window=0: the continuation must see exactly RoPE(up_K down_K x + b_K) and up_V down_V x + b_V as old K/V."""
    from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

    model = tiny_model("qwen2")  # biases on k/v projections
    ids = torch.randint(1, 256, (1, 40), generator=torch.Generator().manual_seed(8))
    press = CSKVPress(k_density=0.25, v_density=0.5, window=0, sink=0, init="svd")
    _, out, cache_c = continuation_logits(model, press, ids, torch.ones_like(ids), 30)
    inputs = {}
    hooks = [layer.self_attn.k_proj.register_forward_pre_hook(
        lambda mod, args, i=i: inputs.__setitem__(i, args[0])) for i, layer in enumerate(model.model.layers)]
    cache = new_cache(model)
    with torch.no_grad():
        model(ids[:, :30], past_key_values=cache)
        for hook in hooks:
            hook.remove()
        cos, sin = model.model.rotary_emb(inputs[0], torch.arange(30)[None])
        for i, layer in enumerate(cache.layers):
            f, attn = press.factors.layers[i], model.model.layers[i].self_attn
            k = (inputs[i] @ f["k_down"].T @ f["k_up"].T + attn.k_proj.bias).view(1, 30, 2, 16).transpose(1, 2)
            v = (inputs[i] @ f["v_down"].T @ f["v_up"].T + attn.v_proj.bias).view(1, 30, 2, 16).transpose(1, 2)
            layer.keys, _ = apply_rotary_pos_emb(k, k, cos, sin)
            layer.values = v
        ref = model(ids[:, 30:], past_key_values=cache).logits
    assert cache_c.layers[0].n_latent == 40  # window 0: everything (context and continuation) ends as latents
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)


def test_adaptive_ranks_keep_the_budget_and_lower_the_error(tmp_path):
    """Adaptive allocation stores exactly the uniform budget of latent channels, spends it where the whitened
    spectra say it removes the most error (lower summed weighted error than uniform), and round-trips to disk."""
    model = tiny_model("llama")
    n_layers = len(model.model.layers)
    calib = torch.randint(1, 256, (4, 64), generator=torch.Generator().manual_seed(9))
    stats = cskv_train.collect_attention_inputs(model, calib)
    k_ranks, v_ranks = cskv_train.allocate_ranks(model, stats, 8, 8, key_weight=2.0)
    assert sum(k_ranks) + sum(v_ranks) == n_layers * 16 and min(k_ranks + v_ranks) >= 1
    cfg = {"steps": 0, "init": "svd"}
    uniform = cskv_train.fit(model, stats, 0.25, 0.25, cskv_train.TrainConfig(**cfg), progress=False)
    adaptive = cskv_train.fit(model, stats, 0.25, 0.25,
                              cskv_train.TrainConfig(**cfg, allocation="adaptive", key_weight=2.0), progress=False)

    def weighted_error(factors):
        total = 0.0
        for index, layer in enumerate(factors.layers):
            attn = model.model.layers[index].self_attn
            # the optimal (whitened) factors of each rank, so the comparison is about the allocation alone
            for kind, proj, weight in (("k", attn.k_proj, 2.0), ("v", attn.v_proj, 1.0)):
                root = cskv_train._moment_root(stats[index]["second"]).double()
                sv = torch.linalg.svdvals(proj.weight.detach().double() @ root).pow(2)
                total += weight * float(sv[layer[f"{kind}_down"].shape[0]:].sum() / sv.sum())
        return total

    assert adaptive.k_ranks == k_ranks and adaptive.v_ranks == v_ranks
    assert weighted_error(adaptive) <= weighted_error(uniform) + 1e-9
    cskv_train.save(adaptive, tmp_path / "a")
    loaded = cskv_train.load(tmp_path / "a")
    assert loaded.k_ranks == k_ranks and loaded.metadata["allocation"] == "adaptive"
    ids = torch.randint(1, 256, (1, 40))
    out = continuation_logits(model, CSKVPress(k_density=0.25, v_density=0.25, window=4, factors=loaded), ids,
                              torch.ones_like(ids), 30)[1]
    assert torch.isfinite(out).all()
    with pytest.raises(ConfigError, match="latent channels"):
        with CSKVPress(k_density=0.25, v_density=0.5, factors=loaded)(model):
            pass


@pytest.mark.parametrize("left", [True, False])
def test_exact_tokens_are_attended_with_their_original_keys_and_values(left):
    """With every latent token kept exact the cache attends exactly; a few exact tokens cost their K/V bytes."""
    model = tiny_model("llama")
    ids, mask = padded_batch(length=60, left=left)
    _, ref, _ = continuation_logits(model, None, ids, mask, 44)
    allexact = CSKVPress(k_density=0.25, v_density=0.25, window=4, sink=0, init="svd", exact_ratio=0.99)
    _, out, cache = continuation_logits(model, allexact, ids, mask, 44)
    valid = mask[:, 44:].bool()
    torch.testing.assert_close(out[valid], ref[valid], atol=2e-5, rtol=1e-5)
    assert cache.layers[0].store["k_exact"].shape == (2, 2, 40, 16)  # the 40 latents of 44 prompt tokens
    none = CSKVPress(k_density=0.25, v_density=0.25, window=4, sink=0, init="svd")
    few = CSKVPress(k_density=0.25, v_density=0.25, window=4, sink=0, init="svd", exact_ratio=0.1)
    _, out_none, cache_none = continuation_logits(model, none, ids, mask, 44)
    _, out_few, cache_few = continuation_logits(model, few, ids, mask, 44)
    store = cache_few.layers[0].store
    assert store["exact_idx"].shape == (2, 4) and bool((store["exact_idx"][1] >= (7 if left else 0)).all())
    err_none, err_few = (out_none - ref)[valid].abs().mean(), (out_few - ref)[valid].abs().mean()
    assert err_few < err_none
    extra = sum(lf.nbytes() - ln.nbytes() for lf, ln in zip(cache_few.layers, cache_none.layers))
    # per layer: K and V of 4 tokens x batch 2 x 2 heads x 16 channels (fp32), and int32 indices [2, 4]
    assert extra == 2 * (2 * 2 * 2 * 4 * 16 * 4 + 2 * 4 * 4)
