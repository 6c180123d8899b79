"""Evaluation of KV-cache presses: perplexity against a compressed cache, multi-needle retrieval, memory, speed.

Every function takes ``press``: any object whose call ``press(model)`` is a context manager (prunekit presses, and
kvpress presses too), or None for the full cache.

* `compressed_perplexity`: for each window, the preceding context is prefilled (and compressed) into a cache, then the
  segment is scored by one forward over that cache; the segment's own tokens are attended at full width, so only the
  context's compression is measured. With ``press=None`` this is ordinary strided perplexity.
* `retrieval_prompts` / `retrieval_accuracy`: several named 5-digit keys hidden at 10 depths in several real texts
  (WikiText-2 test and valid, Tiny Shakespeare); the context is compressed, then each key is asked for after it
  (the question itself is not compressed, as in kvpress's pipeline); `prompts_below` compares with the full cache.
* `measure_cache`: prefill once, count the bytes the cache holds (`prunekit.kvcache.base.cache_nbytes`), then time
  greedy decoding steps; `decode_speed` times several presses' steps interleaved.
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


def press_context(press, model):
    """`press(model)` as a context manager, or a null context for the full cache (None)."""
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
        with press_context(press, model):
            model(chunk[:, :context], past_key_values=cache, use_cache=True, logits_to_keep=1)
            logits = model(chunk[:, context:context + segment], past_key_values=cache, use_cache=True).logits
        targets = chunk[:, context + 1:context + segment + 1]
        nll = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                reduction="sum")
        total += float(nll)
        count += targets.numel()
    mean = total / max(count, 1)
    return {"ppl": math.exp(mean), "nll": mean, "tokens": count, "windows": n_windows}


# ------------------------------------------------------------------------------------------ multi-needle retrieval

HAYSTACKS = ("text/wikitext2_test.txt", "text/tinyshakespeare.txt", "text/wikitext2_valid.txt")
DEPTHS = tuple(round(0.05 + 0.1 * i, 2) for i in range(10))  # 0.05 ... 0.95
NAMES = ("red door", "blue box", "green gate", "old clock", "silver key", "small boat", "tall tower", "white horse")
RETRIEVAL_INTRO = ("Several pass keys are hidden inside a lot of irrelevant text. Find them and memorize them. "
                   "I will quiz you about them.\n")
RETRIEVAL_NEEDLE = "\nThe pass key of the {name} is {key}. Remember it: the pass key of the {name} is {key}.\n"
RETRIEVAL_QUESTION = "\nWhat is the pass key of the {name}? The pass key of the {name} is"


def retrieval_prompts(tokenizer, n_tokens: int, n_prompts: int = 12, needles: int = 3, seed: int = 0,
                      haystacks: Sequence[str] = HAYSTACKS, depths: Sequence[float] = DEPTHS) -> List[Dict[str, Any]]:
    """Multi-needle retrieval prompts of about `n_tokens` tokens.

    Prompt ``p`` takes its haystack from ``haystacks[p % len(haystacks)]`` (a seeded random span of real text) and
    hides `needles` differently named 5-digit keys in it, at depths that walk through `depths` (prompt ``p``, needle
    ``j`` sits at ``depths[(p * needles + j) % len(depths)]``, so 12 prompts of 3 needles visit every depth 3-4
    times). Each needle is asked for separately, after the context (the question is not part of the compressed
    prompt, as in kvpress's pipeline).

    Returns:
        Dicts with ``context`` (token ids ``[T]``) and ``questions``: a list of ``{"ids", "answer", "depth", "name"}``.
    """
    rng = random.Random(seed)
    texts = [data_file(h, "retrieval haystack").read_text(encoding="utf-8") for h in haystacks]
    needle_len = len(tokenizer(RETRIEVAL_NEEDLE.format(name=NAMES[0], key="00000"),
                               add_special_tokens=False)["input_ids"])
    budget = n_tokens - needles * needle_len - len(tokenizer(RETRIEVAL_INTRO, add_special_tokens=False)["input_ids"])
    prompts = []
    for p in range(n_prompts):
        text = texts[p % len(texts)]
        start = rng.randrange(0, len(text) - budget * 8)
        span = tokenizer(text[start:start + budget * 8], add_special_tokens=False)["input_ids"][:budget]
        hay = tokenizer.decode(span)
        names = rng.sample(NAMES, needles)
        spots = sorted(((depths[(p * needles + j) % len(depths)], names[j]) for j in range(needles)))
        pieces, last, questions = [RETRIEVAL_INTRO], 0, []
        for depth, name in spots:
            cut = int(len(hay) * depth)
            space = hay.rfind(" ", 0, cut)
            cut = space if space > last else cut
            key = str(rng.randrange(10000, 100000))
            pieces += [hay[last:cut], RETRIEVAL_NEEDLE.format(name=name, key=key)]
            last = cut
            question = tokenizer(RETRIEVAL_QUESTION.format(name=name), add_special_tokens=False)["input_ids"]
            questions.append({"ids": torch.tensor(question), "answer": key, "depth": depth, "name": name})
        pieces.append(hay[last:])
        context = tokenizer("".join(pieces), add_special_tokens=False)["input_ids"]
        prompts.append({"context": torch.tensor(context), "questions": questions,
                        "haystack": haystacks[p % len(texts)]})
    return prompts


@torch.no_grad()
def answer_after_context(model, cache, question: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Greedy answer to ``question [q]`` over a filled `cache`, then the cache is cropped back to the context.

    Runs with whatever attention is active: outside a press context, compressed cache layers serve
    transformers' attention (`prunekit.kvcache.base.CompressedLayer.materialize`), as in kvpress's pipeline.
    """
    context = cache.get_seq_length()
    logits = model(question[None], past_key_values=cache, use_cache=True, logits_to_keep=1).logits
    tokens = [logits[0, -1].argmax()]
    for _ in range(max_new_tokens - 1):
        logits = model(tokens[-1].view(1, 1), past_key_values=cache, use_cache=True).logits
        tokens.append(logits[0, -1].argmax())
    cache.crop(context)
    return torch.stack(tokens)


@torch.no_grad()
def retrieval_accuracy(model, tokenizer, press, prompts: List[Dict[str, Any]], max_new_tokens: int = 6,
                       progress=None) -> Dict[str, Any]:
    """Prefill each context through `press` (compressing it), then ask every needle's question after it.

    Returns:
        ``{"found", "needles", "accuracy", "prompts_solved", "per_prompt": [found per prompt], "per_depth":
        {depth: accuracy}, "answers": [...]}``.
    """
    answers, per_prompt, per_depth = [], [], {}
    for p in prompts:
        cache = new_cache(model)
        with press_context(press, model):
            model.model(input_ids=p["context"][None], past_key_values=cache, use_cache=True)
        found = 0
        for q in p["questions"]:
            reply = tokenizer.decode(answer_after_context(model, cache, q["ids"], max_new_tokens),
                                     skip_special_tokens=True)
            match = re.search(r"\d+", reply)
            ok = bool(match) and match.group(0) == q["answer"]
            found += ok
            per_depth.setdefault(q["depth"], []).append(ok)
            answers.append({"depth": q["depth"], "answer": q["answer"], "reply": reply.strip(), "ok": ok})
        per_prompt.append(found)
        if progress is not None:
            progress()
    needles = len(answers)
    return {"found": sum(per_prompt), "needles": needles, "accuracy": sum(per_prompt) / max(needles, 1),
            "prompts_solved": sum(f == len(p["questions"]) for f, p in zip(per_prompt, prompts)),
            "per_prompt": per_prompt, "per_depth": {d: sum(v) / len(v) for d, v in sorted(per_depth.items())},
            "answers": answers}


def prompts_below(result: Dict[str, Any], reference: Dict[str, Any]) -> float:
    """How many prompts' worth of needles `result` misses against `reference`: the needles the reference finds
    and this one does not, summed per prompt and divided by the needles per prompt."""
    per = max(1, reference["needles"] // max(len(reference["per_prompt"]), 1))
    lost = sum(max(0, r - m) for r, m in zip(reference["per_prompt"], result["per_prompt"]))
    return lost / per


@torch.no_grad()
def decode_speed(model, presses: Dict[str, Any], ids: torch.Tensor, steps: int = 16) -> Dict[str, float]:
    """Greedy decoding ms/token of several presses after the same prefill, their steps interleaved (so load on a
    shared machine hits all of them alike); the median step of each.

    Args:
        presses: name -> press (None: the full cache). ids: ``[B, T]`` prompt.
    """
    state = {}
    for name, press in presses.items():
        cache = new_cache(model)
        with press_context(press, model):
            logits = model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
        state[name] = [cache, logits[:, -1:].argmax(-1), []]
    for step in range(steps + 1):
        for name, press in presses.items():
            cache, token, times = state[name]
            with press_context(press, model):
                t0 = time.perf_counter()
                logits = model(token, past_key_values=cache, use_cache=True).logits
                if step:  # the first step warms up
                    times.append(time.perf_counter() - t0)
            state[name][1] = logits[:, -1:].argmax(-1)
    return {name: 1000.0 * sorted(times)[len(times) // 2] for name, (_, _, times) in state.items()}


@torch.no_grad()
def measure_cache(model, press, ids: torch.Tensor, decode_tokens: int = 16) -> Dict[str, float]:
    """Prefill ``ids [B, T]``, count the cache's bytes, then time greedy decoding.

    Returns:
        ``{"bytes", "prefill_s", "decode_ms_per_token", "tokens"}`` (decode timing over `decode_tokens` steps
        after one warm-up step; 0 steps skips it).
    """
    cache = new_cache(model)
    with press_context(press, model):
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
