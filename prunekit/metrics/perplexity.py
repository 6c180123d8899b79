"""Sliding-window perplexity of a causal language model over one token stream."""
from __future__ import annotations

import math
from typing import Iterator, Optional, Tuple

import torch

from .accuracy import logits_of


def windows(num_tokens: int, context: int, stride: int) -> Iterator[Tuple[int, int, int]]:
    """The ``(start, end, first_scored)`` windows `perplexity` evaluates.

    Windows start at 0, stride, 2*stride, ... and span ``[start, min(start + context, num_tokens))``; the last one
    ends at `num_tokens`. A window scores the targets at positions ``max(start + 1, previous end)`` to ``end - 1``,
    so every token after the first is scored at most once, and with ``stride == context`` the first token of each
    window (which has no context inside the window) is not scored.
    """
    previous_end = 0
    for start in range(0, num_tokens, stride):
        end = min(start + context, num_tokens)
        first = max(start + 1, previous_end)
        if first < end:
            yield start, end, first
        previous_end = end
        if end == num_tokens:
            break


def perplexity(model: torch.nn.Module, token_ids: torch.Tensor, context: int = 512, stride: Optional[int] = None,
               progress: bool = False) -> float:
    """Perplexity ``exp(mean NLL)`` of `token_ids` under `model`, evaluated in windows of `context` tokens.

    Exactly: for each window ``[start, end)`` of `windows` (stride defaults to `context`: non-overlapping windows),
    the model sees ``token_ids[start:end]`` (no BOS is added) and each scored position t in
    ``[first, end)`` contributes ``-log softmax(logits[t - 1 - start])[token_ids[t]]``, i.e. the token predicted
    from the tokens of the same window before it. The result is ``exp(sum of NLL / number of scored tokens)``.
    With ``T`` tokens and ``stride == context`` that is ``T - ceil(T / context)`` scored tokens (4,096 tokens at
    context 512: 8 windows x 511 = 4,088).

    Args:
        model: maps ids ``[1, L]`` to logits ``[1, L, V]`` (a tensor or an output with ``.logits``); run in eval
            mode under ``torch.inference_mode`` on the device of its parameters.
        token_ids: ``[T]`` int64 ids (a ``[1, T]`` batch of one is accepted).
        context: window length L.
        stride: distance between window starts (default `context`); smaller values give each scored token more
            context at a higher cost.
        progress: show a rich progress bar over windows.
    """
    ids = token_ids.reshape(-1).long()
    stride = context if stride is None else stride
    if context < 2 or not 1 <= stride <= context:
        raise ValueError(f"prunekit.metrics.perplexity: need context >= 2 and 1 <= stride <= context; "
                         f"got context={context}, stride={stride}")
    spans = list(windows(len(ids), context, stride))
    if not spans:
        raise ValueError(f"prunekit.metrics.perplexity: need at least 2 tokens, got {len(ids)}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    total_nll, scored = 0.0, 0
    try:
        from rich.progress import Progress

        with Progress(transient=True, disable=not progress) as bar, torch.inference_mode():
            task = bar.add_task("perplexity", total=len(spans))
            for start, end, first in spans:
                window = ids[start:end].to(device)
                logits = logits_of(model(window[None]))[0].float()
                predict = logits[first - 1 - start:end - 1 - start]
                targets = window[first - start:end - start]
                total_nll += float(torch.nn.functional.cross_entropy(predict, targets, reduction="sum"))
                scored += end - first
                bar.advance(task)
    finally:
        model.train(was_training)
    return math.exp(total_nll / scored)
