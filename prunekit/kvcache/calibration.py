"""Calibration statistics for CSKV training: each layer's attention inputs, optionally weighted by attention.

The factors are fitted to ``E[x x^T]`` of the inputs ``x`` of each layer's key/value projections. With
``weighting="uniform"`` (the paper) every calibration token counts the same. With ``weighting="attention"`` each
token counts in proportion to the attention it receives from the queries that will see it *as a latent*: those at
least ``window`` positions later (nearer queries see it in the full-precision window), averaged over heads. The
first ``sink`` tokens, which the press keeps exact, get no weight.

Why: a latent token's reconstruction error reaches the layer output multiplied by its attention probability (the
output error ``sum_j p_j e_j`` is bounded by ``sum_j p_j ||e_j||`` and, for keys, a logit error on token ``j`` moves
the output by about ``p_j``), so tokens nobody attends to should not cost rank.
"""
from __future__ import annotations

from typing import Dict, List

import torch

from ..errors import ConfigError
from . import hf_compat
from .base import Observation
from .hf_compat import AttentionCall

WEIGHTINGS = ("uniform", "attention")


def received_attention(call: AttentionCall, sink: int, window: int) -> torch.Tensor:
    """``[B, T]`` mean attention (over heads) each token receives from the queries at least `window` slots after it.

    Tokens before `sink`, tokens no such query sees and padding get 0; each sequence's weights are then scaled to
    mean 1 over its weighted tokens, so every calibration sequence counts the same.
    """
    length = call.q_len
    allowed = call.allowed(length).expand(call.batch, 1, length, length)
    probs = Observation.from_call(call, length).probs().float().mean(dim=1)  # [B, query i, key j], all rows
    slots = torch.arange(length, device=probs.device)
    far = allowed[:, 0] & (slots[:, None] - slots[None, :] >= window)[None]
    seen = far.sum(dim=1)  # [B, T]: queries that see each token as a latent
    weight = (probs * far).sum(dim=1) / seen.clamp_min(1)
    weight[:, :min(sink, length)] = 0.0
    weight = weight.masked_fill(seen == 0, 0.0)
    used = (weight > 0).sum(dim=1, keepdim=True).clamp_min(1)
    return weight * used / weight.sum(dim=1, keepdim=True).clamp_min(1e-30)


@torch.no_grad()
def collect_attention_inputs(model: torch.nn.Module, ids: torch.Tensor, progress=None, keep_inputs: bool = False,
                             weighting: str = "uniform", sink: int = 4,
                             window: int = 32) -> List[Dict[str, torch.Tensor]]:
    """Record every layer's (weighted) attention-input statistics on calibration text.

    Args:
        model: the frozen causal LM. ids: ``[N, T]`` calibration token ids (one sequence per forward).
        progress: optional progress object with ``add_task`` / ``advance``.
        keep_inputs: also keep the raw inputs and token weights (needed for quantisation-aware training).
        weighting: ``"uniform"`` or ``"attention"`` (see the module docstring). sink / window: the press's layout,
            used by the attention weighting.

    Returns:
        One dict per layer: ``second [d, d]`` (float64 weighted ``E[x x^T]``), ``absmean [d]`` (weighted ``E|x|``),
        ``weighting`` and, with `keep_inputs`, ``inputs [N, T, d]`` and ``weights [N, T]``.
    """
    if weighting not in WEIGHTINGS:
        raise ConfigError(f"CSKV calibration weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    modules = hf_compat.attention_modules(model)
    sums = [{"second": 0.0, "absmean": 0.0, "weight": 0.0, "inputs": [], "weights": []} for _ in modules]

    def record(call: AttentionCall) -> torch.Tensor:
        entry = sums[call.layer_idx]
        x = call.hidden.detach()
        if weighting == "attention":
            w = received_attention(call, sink, window)
        else:
            w = torch.ones(x.shape[:2], dtype=torch.float32, device=x.device)
        flat, flat_w = x.reshape(-1, x.shape[-1]).double(), w.reshape(-1, 1).double()
        entry["second"] = entry["second"] + (flat * flat_w).T @ flat
        entry["absmean"] = entry["absmean"] + (flat.abs() * flat_w).sum(0)
        entry["weight"] = entry["weight"] + float(flat_w.sum())
        if keep_inputs:
            entry["inputs"].append(x.clone())
            entry["weights"].append(w.float())
        return call.hf_attention(call.key, call.value)

    task = progress.add_task("CSKV calibration forwards", total=ids.shape[0]) if progress else None
    with hf_compat.patched_attention(model, record):
        for row in range(ids.shape[0]):
            model(ids[row:row + 1], use_cache=False)
            if progress:
                progress.advance(task)
    out = []
    for entry in sums:
        total = max(entry["weight"], 1e-30)
        item = {"second": entry["second"] / total, "absmean": (entry["absmean"] / total).float(),
                "weighting": weighting}
        if keep_inputs:
            item["inputs"] = torch.cat(entry["inputs"], dim=0)
            item["weights"] = torch.cat(entry["weights"], dim=0)
        out.append(item)
    return out
