"""The MACPruning experiment in the simulator: traces a CPA needs, without and with the defence, and with the
realigning counter-attack.

Three attacks on the same target weight of a model's first layer (int8):

- ``undefended``: every MAC runs, the target MAC sits at the same time in every trace;
- ``defended``: per inference a pixel activation map (`prunekit.dynamic.pixel_mask`) skips MACs, moving the target
  in time; the attacker (who profiled the device) correlates at the target's most likely time;
- ``realigned`` (the "Double Strike" counter-attack, methods.md section 6): the attacker knows which MACs ran, puts
  every sample back in place and drops the traces where the target MAC was skipped.

For each, and each seed, `attacks` independent trace sets give a success rate at growing trace counts; the traces
needed are the first count from which the rate stays at least `success_rate`.

Each attack scores a guess at one time sample (``window`` 0) or its best over ``2 * window + 1`` samples around it.
A wide window lets other MACs reading the same input pixel with another weight (a convolution reads each pixel
through every kernel tap) win the attack, so the default is the single sample where the target is most likely.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import ConfigError
from .cpa import (GUESSES, correlation_scores, hypotheses, log_checkpoints, summarize, traces_needed,
                  true_rank)
from .leakage import LayerGeometry, mac_schedule, quantize_int8, simulate_traces

ATTACKS = ("undefended", "defended", "realigned")


@dataclass
class SimulationConfig:
    """Settings of the leakage experiment.

    Attributes:
        sigma: Gaussian noise standard deviation (in Hamming-weight units).
        max_traces: traces per attack (the cap; "not reached" counts as more).
        checkpoints: how many log-spaced trace counts are scored.
        attacks: independent attacks per seed (the success rate's denominator).
        success_rate: the fixed success rate of the traces-needed figure.
        seeds: seeds (weights stay, noise, inputs and maps change).
        output_channel: the first layer's output channel attacked.
        rows: output rows simulated (the trace window; None: every row).
        target: ``(output y, output x, tap)`` of the attacked MAC (None: the centre tap at the window's middle
            position).
        window: half-width (samples) of the time window each guess is scored over.
    """

    sigma: float = 1.0
    max_traces: int = 20000
    checkpoints: int = 30
    attacks: int = 4
    success_rate: float = 0.75
    seeds: Tuple[int, ...] = (0, 1, 2, 3, 4)
    output_channel: int = 0
    rows: Optional[Tuple[int, ...]] = None
    target: Optional[Tuple[int, int, int]] = None
    window: int = 0

    def __post_init__(self):
        if self.window < 0:
            raise ConfigError(f"security simulate: window must be >= 0, got {self.window}")
        if self.sigma < 0 or self.max_traces < 10 or self.attacks < 1 or self.checkpoints < 2:
            raise ConfigError("security simulate: sigma >= 0, max_traces >= 10, attacks >= 1, checkpoints >= 2")
        if not 0 < self.success_rate <= 1:
            raise ConfigError(f"security simulate: success_rate must lie in (0, 1], got {self.success_rate}")
        self.seeds = tuple(int(s) for s in self.seeds)
        if not self.seeds:
            raise ConfigError("security simulate: give at least one seed")


@dataclass
class Target:
    """The attacked MAC: its execution index in the undefended order, weight tap, input element, true int8 weight."""

    index: int
    tap: int
    element: int
    pixel: int
    weight: int
    description: str = ""


def choose_target(weights: np.ndarray, geom: LayerGeometry, cfg: SimulationConfig) -> Tuple[Any, Target]:
    """The MAC schedule of the simulated window and the attacked MAC in it."""
    h_out, w_out = geom.out_hw()
    rows = cfg.rows if cfg.rows is not None else tuple(range(h_out))
    schedule = mac_schedule(geom, [r * w_out + c for r in rows for c in range(w_out)])
    kh, kw = geom.kernel
    if cfg.target is None:
        oy, ox, tap = rows[len(rows) // 2], w_out // 2, (kh // 2) * kw + kw // 2
        if weights[tap] == 0:  # a zero weight leaks nothing; take the largest tap of the first input channel
            tap = int(np.abs(weights[:kh * kw]).argmax())
    else:
        oy, ox, tap = cfg.target
    index = schedule.index_of(oy * w_out + ox, tap)
    return schedule, Target(index, tap, int(schedule.element[index]), int(schedule.pixel[index]), int(weights[tap]),
                            f"w[{cfg.output_channel}, tap {tap}] = {int(weights[tap])} at output ({oy}, {ox})")


def _attack(kind: str, weights: np.ndarray, schedule, target: Target, pam, geom: LayerGeometry, cfg: SimulationConfig,
            rng: np.random.Generator, torch_gen: torch.Generator, checkpoints: np.ndarray) -> Tuple[np.ndarray, float, np.ndarray]:
    """One attack: ranks of the true weight at each checkpoint, the target's time spread (std), the scores [K, G]."""
    n = cfg.max_traces
    inputs = rng.integers(-128, 128, size=(n, geom.in_channels * geom.height * geom.width), dtype=np.int64)
    active = None
    if kind != "undefended":
        active = pam.draw(n, torch_gen).reshape(n, -1).numpy()
    traces, executed = simulate_traces(weights, inputs, schedule, active, cfg.sigma, rng, realign=(kind == "realigned"))
    keep = executed[:, target.index] if kind == "realigned" else None
    if kind == "defended":
        ran = executed[:, target.index]
        times = (np.cumsum(executed, axis=1)[:, target.index] - 1)[ran]
        if len(times) == 0:  # the target never ran: nothing to align on
            centre, spread = target.index, 0.0
        else:
            centre, spread = int(np.bincount(times).argmax()), float(times.std())  # the most likely time (profiled)
    else:
        centre, spread = target.index, 0.0
    lo, hi = max(0, centre - cfg.window), min(traces.shape[1], centre + cfg.window + 1)
    hyp = hypotheses(inputs[:, target.element])
    scores = correlation_scores(hyp, traces[:, lo:hi], checkpoints, keep)
    return true_rank(scores, int(np.nonzero(GUESSES == target.weight)[0][0])), spread, scores


def simulate_defence(first_conv: torch.nn.Conv2d, input_hw: Tuple[int, int], pam, cfg: SimulationConfig,
                     attacks: Sequence[str] = ATTACKS) -> Dict[str, Any]:
    """Traces needed by each attack, per seed, plus correlation curves of the first seed and the theoretical
    mitigation ``R = 1 / max_t P(target at t)^2`` (methods.md section 6).

    Args:
        first_conv: the model's first layer (its weights are quantised to int8).
        input_hw: ``(H, W)`` of the input.
        pam: a `PixelActivationMap` (the defence), or None to run only the undefended attack.
        cfg: the experiment settings.
        attacks: which of `ATTACKS` to run (leave out ``undefended`` to reuse a baseline: see `ratios`).

    Returns:
        ``{"target", "checkpoints", "needed": {attack: [per seed]}, "summary": {attack: {median, min, max, failed}},
        "ratio" (defended / undefended medians), "realigned_ratio", "curves": {attack: {"true": [K], "best_wrong":
        [K]}}, "target_time_std"}``.
    """
    q, _ = quantize_int8(first_conv.weight[cfg.output_channel])
    weights = q.reshape(-1)
    geom = LayerGeometry.of(first_conv, *input_hw)
    schedule, target = choose_target(weights, geom, cfg)
    checkpoints = log_checkpoints(10, cfg.max_traces, cfg.checkpoints)
    kinds = [k for k in attacks if pam is not None or k == "undefended"]
    needed: Dict[str, List[Optional[int]]] = {k: [] for k in kinds}
    curves: Dict[str, Dict[str, List[float]]] = {}
    spreads: List[float] = []
    true_index = int(np.nonzero(GUESSES == target.weight)[0][0])
    for seed in cfg.seeds:
        for kind in kinds:
            rng = np.random.default_rng([seed, ATTACKS.index(kind)])
            gen = torch.Generator().manual_seed(seed * 1000 + ATTACKS.index(kind))
            ranks = []
            for a in range(cfg.attacks):
                rank, spread, scores = _attack(kind, weights, schedule, target, pam, geom, cfg, rng, gen, checkpoints)
                ranks.append(rank)
                if kind == "defended":
                    spreads.append(spread)
                if seed == cfg.seeds[0] and a == 0:
                    wrong = np.delete(np.nan_to_num(scores, nan=0.0), true_index, axis=1)
                    curves[kind] = {"true": np.nan_to_num(scores[:, true_index], nan=0.0).tolist(),
                                    "best_wrong": wrong.max(axis=1).tolist()}
            needed[kind].append(traces_needed(np.stack(ranks), checkpoints, cfg.success_rate))
    summary = summarize(needed, cfg.max_traces)
    out = {"target": target.__dict__, "mac_window": len(schedule), "checkpoints": checkpoints.tolist(),
           "needed": needed, "summary": summary, "curves": curves,
           "target_time_std": float(np.mean(spreads)) if spreads else 0.0}
    if "defended" in summary:
        out["theoretical_ratio"] = theoretical_ratio(schedule, target, pam, cfg.max_traces)
    if "undefended" in summary:
        out.update(ratios(summary, summary["undefended"]["median"]))
    return out


def ratios(summary: Dict[str, Dict[str, float]], undefended: float) -> Dict[str, Any]:
    """Defended and realigned traces needed over the undefended median. Where the defended attack never succeeded
    within the cap, the ratio is the lower bound ``cap / undefended`` (``ratio_is_lower_bound``)."""
    out: Dict[str, Any] = {}
    for kind, key in (("defended", "ratio"), ("realigned", "realigned_ratio")):
        if kind in summary:
            value = summary[kind]["median"]
            bound = not np.isfinite(value)
            out[key] = (summary[kind]["cap"] if bound else value) / undefended
            out[f"{key}_is_lower_bound"] = bool(bound)
    return out


def theoretical_ratio(schedule, target: Target, pam, n: int = 20000, seed: int = 0) -> float:
    """``1 / max_t P(target MAC at time t)^2`` estimated from `n` drawn maps (a skipped target counts as absent)."""
    active = pam.draw(n, torch.Generator().manual_seed(seed)).reshape(n, -1).numpy()
    executed = active[:, schedule.pixel[:target.index + 1]]
    ran = executed[:, -1]
    times = executed.sum(axis=1)[ran] - 1
    peak = np.bincount(times).max() / n if len(times) else 0.0
    return float(1.0 / peak ** 2) if peak > 0 else float("inf")


def plot_curves(result: Dict[str, Any], path: str, title: str = "") -> None:
    """Correlation of the true weight and of the best wrong guess against the number of traces, per attack."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_write

    fig, ax = plt.subplots(figsize=(6.5, 4))
    colours = {"undefended": "tab:red", "defended": "tab:green", "realigned": "tab:orange"}
    for kind, curve in result["curves"].items():
        ax.plot(result["checkpoints"], curve["true"], color=colours[kind], label=f"{kind}: true weight")
        ax.plot(result["checkpoints"], curve["best_wrong"], color=colours[kind], linestyle=":",
                label=f"{kind}: best wrong guess")
    ax.set_xscale("log")
    ax.set_xlabel("traces")
    ax.set_ylabel("max |correlation|")
    ax.set_title(title or "CPA on the first layer")
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def traces_table(first_conv: torch.nn.Conv2d, input_hw: Tuple[int, int], maps: Dict[str, Any],
                 cfg: SimulationConfig) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """Traces needed without the defence (once) and with each named activation map (defended and realigned).

    Args:
        maps: ``{label: PixelActivationMap}``.

    Returns:
        (one row per map: ``{"map", "undefended", "defended", "realigned", "ratio", "ratio_is_lower_bound",
        "realigned_ratio", "theoretical_ratio", "failed"}``, the result dict of the first map (with curves, for
        plotting); the undefended attack's curve is merged into it).
    """
    base = simulate_defence(first_conv, input_hw, None, cfg, attacks=("undefended",))
    undefended = base["summary"]["undefended"]["median"]
    rows, first = [], None
    for label, pam in maps.items():
        result = simulate_defence(first_conv, input_hw, pam, cfg, attacks=("defended", "realigned"))
        result["summary"]["undefended"] = base["summary"]["undefended"]
        result.update(ratios(result["summary"], undefended))
        summary = result["summary"]
        rows.append({"map": label, "undefended": undefended, "defended": summary["defended"]["median"],
                     "realigned": summary["realigned"]["median"], "ratio": result["ratio"],
                     "ratio_is_lower_bound": result["ratio_is_lower_bound"],
                     "realigned_ratio": result["realigned_ratio"], "theoretical_ratio": result["theoretical_ratio"],
                     "failed": summary["defended"]["failed"], "target": result["target"]["description"]})
        if first is None:
            first = result
            first["curves"] = {"undefended": base["curves"]["undefended"], **result["curves"]}
    return rows, first or base
