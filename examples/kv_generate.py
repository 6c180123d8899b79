"""Generate with a compressed KV cache: ThinK (40% of key channels) and CSKV (80% smaller, calibrated in one call).

    python examples/kv_generate.py            # SmolLM2-135M from ../shared/data, CPU, a few minutes

Both presses are context managers around an unchanged Hugging Face model: `model(...)` and `model.generate(...)`
inside the block store the compressed cache. The cache can also be read after the block (as kvpress's
``kv-press-text-generation`` pipeline does); tokens added there are kept uncompressed. Memory figures count what
the press itself holds (CSKV's factors) besides the cache.
"""
from __future__ import annotations

import tempfile

import torch

from prunekit.kvcache import calibrate
from prunekit.kvcache.cskv import CSKVPress
from prunekit.kvcache.evaluate import wikitext_ids
from prunekit.kvcache.hf_compat import new_cache
from prunekit.kvcache.memory import cache_nbytes_as, press_fixed_nbytes
from prunekit.kvcache.think import ThinKPress
from prunekit.models.hf import load_tokenizer, smollm2_135m


def generate(model, tokenizer, press, prompt_ids: torch.Tensor, new_tokens: int = 20):
    """Greedy continuation with `press` (None: the full cache); returns the text and the bytes kept alive."""
    cache = new_cache(model)
    options = dict(attention_mask=torch.ones_like(prompt_ids), past_key_values=cache, max_new_tokens=new_tokens,
                   do_sample=False, pad_token_id=tokenizer.eos_token_id)
    with torch.no_grad():
        if press is None:
            out = model.generate(prompt_ids, **options)
        else:
            with press(model):
                out = model.generate(prompt_ids, **options)
    return tokenizer.decode(out[0, prompt_ids.shape[1]:]), cache_nbytes_as(cache) + press_fixed_nbytes(press)


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model, tokenizer = smollm2_135m(), load_tokenizer("smollm2_135m")
    prompt = wikitext_ids(tokenizer, "test", max_chars=40_000)[None, :2048]
    with tempfile.TemporaryDirectory() as folder:
        # one call: recommended settings, WikiText-2 valid, factors saved as safetensors + their settings
        calibrate(model, tokenizer, density=0.2, n_seq=8, save_to=folder)
        presses = {"full cache": None,
                   "ThinK, 40% of key channels": ThinKPress(key_ratio=0.4),
                   "CSKV, 80% smaller (factors counted)": CSKVPress.from_pretrained(folder)}
        full_bytes = None
        for name, press in presses.items():
            text, nbytes = generate(model, tokenizer, press, prompt)
            full_bytes = full_bytes or nbytes
            print(f"{name:36s} {nbytes / 2**20:6.1f} MB ({1 - nbytes / full_bytes:5.1%} saved): {text!r}")


if __name__ == "__main__":
    main()
