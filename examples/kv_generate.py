"""Generate with a compressed KV cache: ThinK (half the key channels) and CSKV (80% smaller, trained factors).

    python examples/kv_generate.py            # SmolLM2-135M from ../shared/data, CPU, about a minute

Both presses are context managers around an unchanged Hugging Face model: `model(...)` and `model.generate(...)`
inside the block store the compressed cache, and `prunekit.kvcache.base.cache_nbytes` reports what it really holds.
"""
from __future__ import annotations

import tempfile

import torch

from prunekit.kvcache import cskv_train
from prunekit.kvcache.base import cache_nbytes
from prunekit.kvcache.cskv import CSKVPress
from prunekit.kvcache.evaluate import calibration_ids, wikitext_ids
from prunekit.kvcache.hf_compat import new_cache
from prunekit.kvcache.think import ThinKPress
from prunekit.models.hf import load_tokenizer, smollm2_135m


def generate(model, tokenizer, press, prompt_ids: torch.Tensor, new_tokens: int = 20):
    """Greedy continuation with `press` (None: the full cache); returns the text and the cache's bytes."""
    cache = new_cache(model)
    options = dict(attention_mask=torch.ones_like(prompt_ids), past_key_values=cache, max_new_tokens=new_tokens,
                   do_sample=False, pad_token_id=tokenizer.eos_token_id)
    with torch.no_grad():
        if press is None:
            out = model.generate(prompt_ids, **options)
        else:
            with press(model):
                out = model.generate(prompt_ids, **options)
    return tokenizer.decode(out[0, prompt_ids.shape[1]:]), cache_nbytes(cache)


def main() -> None:
    torch.manual_seed(0)
    model, tokenizer = smollm2_135m(), load_tokenizer("smollm2_135m")
    prompt = wikitext_ids(tokenizer, "test", max_chars=40_000)[None, :1024]
    # CSKV factors: layer-wise reconstruction training on WikiText-2 *valid* text, saved and reloaded
    calib = calibration_ids(tokenizer, 8, 512, split="valid")
    factors = cskv_train.train(model, calib, k_density=0.2, v_density=0.2,
                               cfg=cskv_train.TrainConfig(allocation="adaptive", weighting="attention"),
                               progress=True)
    with tempfile.TemporaryDirectory() as folder:
        cskv_train.save(factors, folder)
        presses = {"full cache": None,
                   "ThinK, 50% of key channels": ThinKPress(key_ratio=0.5),
                   "CSKV, 80% smaller": CSKVPress(k_density=0.2, v_density=0.2, factors=folder)}
        full_bytes = None
        for name, press in presses.items():
            text, nbytes = generate(model, tokenizer, press, prompt)
            full_bytes = full_bytes or nbytes
            print(f"{name:28s} {nbytes / 2**20:6.1f} MB ({1 - nbytes / full_bytes:5.1%} saved): {text!r}")


if __name__ == "__main__":
    main()
