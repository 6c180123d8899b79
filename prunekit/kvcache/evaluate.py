"""Evaluation of KV-cache presses: perplexity against a compressed cache, passkey retrieval, memory, decode speed.

Every function takes ``press``: any object whose call ``press(model)`` is a context manager (prunekit presses, and
kvpress presses too), or None for the full cache.

* `compressed_perplexity`: for each window, the preceding context is prefilled (and compressed) into a cache, then the
  segment is scored by one forward over that cache; the segment's own tokens are attended at full width, so only the
  context's compression is measured. With ``press=None`` this is ordinary strided perplexity.
* `passkey_prompts` / `passkey_accuracy`: a 5-digit number hidden at several depths inside real WikiText-2 text, read
  back by greedy ``model.generate`` in left-padded batches; exact match.
* `measure_cache`: prefill once, count the bytes the cache holds (`prunekit.kvcache.base.cache_nbytes`), then time
  greedy decoding steps.
"""
from __future__ import annotations

import contextlib
import math
import random
import re
import time
from typing import Any, Dict, List, Optional, Sequence

import torch

from ..paths import data_file
from .base import cache_nbytes
from .hf_compat import new_cache

NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
INTRO = ("There is an important pass key hidden inside a lot of irrelevant text. Find it and memorize it. "
         "I will quiz you about the pass key.\n")
QUESTION = "\nWhat is the pass key? The pass key is"


def _ctx(press, model):
    return press(model) if press is not None else contextlib.nullcontext()


def wikitext_ids(tokenizer, split: str = "test", max_chars: Optional[int] = None) -> torch.Tensor:
    """Token ids ``[N]`` of a WikiText-2 split (``test`` / ``valid``), no special tokens."""
    text = data_file(f"text/wikitext2_{split}.txt", "WikiText-2").read_text(encoding="utf-8")
    if max_chars is not None:
        text = text[:max_chars]
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


def calibration_ids(tokenizer, n_seq: int, seq_len: int, split: str = "valid", seed: int = 0) -> torch.Tensor:
    """``[n_seq, seq_len]`` random windows of a WikiText-2 split (default ``valid``: never the test text)."""
    ids = wikitext_ids(tokenizer, split, max_chars=max(200_000, n_seq * seq_len * 8))
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seq_len - 1, (n_seq,), generator=gen)
    return torch.stack([ids[s:s + seq_len] for s in starts.tolist()])


@torch.no_grad()
def compressed_perplexity(model, press, ids: torch.Tensor, context: int, segment: int, n_windows: int,
                          batch_size: int = 1) -> Dict[str, float]:
    """Perplexity of segments scored against a (compressed) cache of their preceding context.

    Args:
        model: causal LM. press: context-manager factory or None. ids: ``[N]`` token ids.
        context: prefill tokens per window. segment: scored tokens per window. n_windows: windows, taken
            back to back from the start of `ids`. batch_size: windows per forward.

    Returns:
        ``{"ppl", "nll", "tokens", "windows"}``.
    """
    span = context + segment + 1
    n_windows = min(n_windows, (ids.numel() - 1) // (context + segment))
    chunks = torch.stack([ids[i * (context + segment): i * (context + segment) + span] for i in range(n_windows)])
    total, count = 0.0, 0
    for start in range(0, n_windows, batch_size):
        chunk = chunks[start:start + batch_size]
        cache = new_cache(model)
        with _ctx(press, model):
            model(chunk[:, :context], past_key_values=cache, use_cache=True, logits_to_keep=1)
            logits = model(chunk[:, context:context + segment], past_key_values=cache, use_cache=True).logits
        targets = chunk[:, context + 1:context + segment + 1]
        nll = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                reduction="sum")
        total += float(nll)
        count += targets.numel()
    mean = total / max(count, 1)
    return {"ppl": math.exp(mean), "nll": mean, "tokens": count, "windows": n_windows}


def passkey_prompts(tokenizer, n_tokens: int, depths: Sequence[float], trials: int, seed: int = 0,
                    split: str = "test") -> List[Dict[str, Any]]:
    """Passkey prompts of about `n_tokens` tokens with the needle at each depth (fraction of the haystack).

    The haystack is a contiguous span of real WikiText-2 text (a seeded random start per trial); the needle is
    inserted at the line break closest to the requested depth.

    Returns:
        Dicts with ``ids`` (``[T]``), ``answer`` (the 5-digit key as a string) and ``depth``.
    """
    text = data_file(f"text/wikitext2_{split}.txt", "WikiText-2").read_text(encoding="utf-8")
    rng = random.Random(seed)
    fixed = len(tokenizer(INTRO + NEEDLE.format(key="00000") + QUESTION, add_special_tokens=False)["input_ids"])
    budget = n_tokens - fixed
    prompts = []
    for trial in range(trials):
        start = rng.randrange(0, len(text) - budget * 8)
        hay = tokenizer(text[start:start + budget * 8], add_special_tokens=False)["input_ids"][:budget]
        hay_text = tokenizer.decode(hay)
        for depth in depths:
            key = str(rng.randrange(10000, 100000))
            cut = int(len(hay_text) * depth)
            nearby = [m.start() for m in re.finditer(r"\n", hay_text)]
            if nearby:
                cut = min(nearby, key=lambda p: abs(p - cut))
            prompt = INTRO + hay_text[:cut] + NEEDLE.format(key=key) + hay_text[cut:] + QUESTION
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            prompts.append({"ids": torch.tensor(ids), "answer": key, "depth": depth, "trial": trial})
    return prompts


@torch.no_grad()
def passkey_accuracy(model, tokenizer, press, prompts: List[Dict[str, Any]], batch_size: int = 2,
                     max_new_tokens: int = 7) -> Dict[str, Any]:
    """Exact-match accuracy of greedy answers (left-padded batches through ``model.generate``).

    Returns:
        ``{"accuracy", "per_depth": {depth: accuracy}, "answers": [...]}``.
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    hits: Dict[float, List[bool]] = {}
    answers = []
    for start in range(0, len(prompts), batch_size):
        group = prompts[start:start + batch_size]
        width = max(p["ids"].numel() for p in group)
        ids = torch.full((len(group), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, p in enumerate(group):
            ids[row, width - p["ids"].numel():] = p["ids"]
            mask[row, width - p["ids"].numel():] = 1
        with _ctx(press, model):
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=pad, past_key_values=new_cache(model))
        for row, p in enumerate(group):
            reply = tokenizer.decode(out[row, width:], skip_special_tokens=True)
            found = re.search(r"\d+", reply)
            ok = bool(found) and found.group(0) == p["answer"]
            hits.setdefault(p["depth"], []).append(ok)
            answers.append({"depth": p["depth"], "answer": p["answer"], "reply": reply.strip(), "ok": ok})
    flat = [a["ok"] for a in answers]
    return {"accuracy": sum(flat) / max(len(flat), 1),
            "per_depth": {d: sum(v) / len(v) for d, v in sorted(hits.items())}, "answers": answers}


@torch.no_grad()
def measure_cache(model, press, ids: torch.Tensor, decode_tokens: int = 16) -> Dict[str, float]:
    """Prefill ``ids [B, T]``, count the cache's bytes, then time greedy decoding.

    Returns:
        ``{"bytes", "prefill_s", "decode_ms_per_token", "tokens"}`` (decode timing over `decode_tokens` steps
        after one warm-up step; 0 steps skips it).
    """
    cache = new_cache(model)
    with _ctx(press, model):
        t0 = time.perf_counter()
        logits = model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
        prefill = time.perf_counter() - t0
        nbytes = cache_nbytes(cache)
        token = logits[:, -1:].argmax(-1)
        elapsed = 0.0
        for step in range(decode_tokens + 1 if decode_tokens else 0):
            t0 = time.perf_counter()
            logits = model(token, past_key_values=cache, use_cache=True).logits
            if step:  # the first step warms up
                elapsed += time.perf_counter() - t0
            token = logits[:, -1:].argmax(-1)
    return {"bytes": nbytes, "prefill_s": prefill, "tokens": ids.shape[1],
            "decode_ms_per_token": 1000.0 * elapsed / decode_tokens if decode_tokens else float("nan")}
