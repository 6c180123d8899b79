"""Correlation power analysis (CPA) of one weight, and the number of traces it needs.

For every guess g of the target weight, the hypothesis of trace n is ``HW(int8(g * x_n))`` with x_n the known input
the target MAC reads; the guess's score is its largest absolute Pearson correlation with any time sample. The
attack succeeds (rank 1) when the true weight scores highest. Correlations are accumulated in chunks, so scores at
growing trace counts cost one pass.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

from .leakage import hamming_weight8

GUESSES = np.arange(-128, 128, dtype=np.int64)


def hypotheses(known: np.ndarray, guesses: np.ndarray = GUESSES) -> np.ndarray:
    """``[G, N]`` float64 hypotheses ``HW(int8(g * x_n))`` for inputs `known` ``[N]``."""
    return hamming_weight8(guesses[:, None] * known[None, :]).astype(np.float64)


def correlation_scores(hyp: np.ndarray, traces: np.ndarray, checkpoints: Sequence[int],
                       keep: Optional[np.ndarray] = None) -> np.ndarray:
    """Each guess's max |correlation| over time, after the first n traces, for each n in `checkpoints`.

    Args:
        hyp: ``[G, N]`` hypotheses.
        traces: ``[N, T]`` samples.
        checkpoints: increasing trace counts (<= N).
        keep: ``[N]`` bool: traces the attacker uses (the others are acquired but discarded; counts include them).

    Returns:
        ``[K, G]`` scores (nan where a count has under 3 usable traces).
    """
    n_guess, t = hyp.shape[0], traces.shape[1]
    sums = {"h": np.zeros(n_guess), "hh": np.zeros(n_guess), "t": np.zeros(t), "tt": np.zeros(t),
            "ht": np.zeros((n_guess, t)), "n": 0.0}
    out = np.full((len(checkpoints), n_guess), np.nan)
    start = 0
    for k, stop in enumerate(checkpoints):
        rows = slice(start, stop)
        h, x = hyp[:, rows], traces[rows].astype(np.float64)
        if keep is not None:
            h, x = h[:, keep[rows]], x[keep[rows]]
        sums["h"] += h.sum(1)
        sums["hh"] += (h * h).sum(1)
        sums["t"] += x.sum(0)
        sums["tt"] += (x * x).sum(0)
        sums["ht"] += h @ x
        sums["n"] += x.shape[0]
        start = stop
        n = sums["n"]
        if n < 3:
            continue
        cov = sums["ht"] / n - np.outer(sums["h"] / n, sums["t"] / n)
        var_h = np.maximum(sums["hh"] / n - (sums["h"] / n) ** 2, 1e-12)
        var_t = np.maximum(sums["tt"] / n - (sums["t"] / n) ** 2, 1e-12)
        out[k] = np.abs(cov / np.sqrt(np.outer(var_h, var_t))).max(axis=1)
    return out


def true_rank(scores: np.ndarray, true_index: int) -> np.ndarray:
    """``[K]`` rank (1 = best) of the true guess at each checkpoint of ``scores [K, G]`` (ties count against it)."""
    true = scores[:, true_index][:, None]
    return 1 + (scores > true).sum(axis=1) + np.isnan(true[:, 0]) * scores.shape[1]


def traces_needed(ranks: np.ndarray, checkpoints: Sequence[int], success_rate: float) -> Optional[int]:
    """Smallest checkpoint from which on at least `success_rate` of the attacks rank the true weight first.

    Args:
        ranks: ``[attacks, K]`` ranks.
        checkpoints: the trace counts of the K columns.

    Returns:
        the trace count, or None when the rate is not reached (and kept) within the last checkpoint.
    """
    rate = (ranks == 1).mean(axis=0)
    ok = rate >= success_rate
    for k in range(len(checkpoints)):
        if ok[k:].all():
            return int(checkpoints[k])
    return None


def log_checkpoints(first: int, last: int, count: int) -> np.ndarray:
    """About `count` distinct, log-spaced trace counts from `first` to `last`."""
    return np.unique(np.geomspace(first, last, count).round().astype(np.int64))


def summarize(needed: Dict[str, Sequence[Optional[int]]], cap: int) -> Dict[str, Dict[str, float]]:
    """Median traces needed per setting over seeds (a run that never succeeded counts as above `cap`)."""
    out = {}
    for name, values in needed.items():
        vals = [float(v) if v is not None else float("inf") for v in values]
        out[name] = {"median": float(np.median(vals)), "min": min(vals), "max": max(vals),
                     "failed": int(sum(v is None for v in values)), "cap": cap}
    return out
