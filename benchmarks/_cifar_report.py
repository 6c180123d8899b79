"""What benchmarks/pipeline_cifar.py reports from its arms' rows: the markdown tables, the targets, the ablation
differences and, for sweeps, the spread over seeds (every difference paired within a seed)."""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

from _common import markdown_table, markdown_target_table, target


def markdown(rows: List[Dict[str, Any]], base: Dict[str, Any], targets, s: Dict[str, Any], command: str) -> str:
    lines = [f"Command: `{command}`", "",
             f"Wall time of the arms when they ran: {sum(r['seconds'] for r in rows):.0f} s (rerunning reads them "
             f"back from the run folder).", "",
             f"Settings: {json.dumps(s)}. CIFAR-10 JPEG copy; accuracy on the first "
             f"{s['test_limit'] or 10000} test images; MACs and params per image; CPU latency: batch 1, 1 thread, "
             f"median of 30 (sensitive to other processes on the machine: see the load average in the JSON).", "",
             f"accuracy: after re-estimating BatchNorm statistics on {s['bn_recalibrate']} training images, the same "
             f"step for every arm; stale BN: the same weights with the running statistics training left.", "",
             "| arm | accuracy | stale BN | params | MACs | MACs kept | latency ms | epochs |",
             "|---|---|---|---|---|---|---|---|",
             f"| original ResNet-56 (B) | {base['accuracy']:.4f} | {base['accuracy']:.4f} | {base['params']:,} | "
             f"{base['macs']:,} | 1.000 | {base['latency_ms']:.2f} | 0 |"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['accuracy']:.4f} | {r['accuracy_stale_bn']:.4f} | {r['params']:,} | "
                     f"{r['macs']:,} | {r['macs'] / base['macs']:.3f} | {r['latency_ms']:.2f} | "
                     f"{r['epochs_total']} |")
    lines += ["", *markdown_target_table(targets)]
    lines += ["", "Ablations (accuracy difference in points, same MACs, same epochs):", ""]
    lines += [f"- {text}: {value:+.2f}" for text, value in ablation_deltas(rows)]
    return "\n".join(lines) + "\n"


def ablation_deltas(rows: List[Dict[str, Any]]):
    """(description, accuracy difference in points) for every ablation whose two arms ran."""
    deltas = ablation_pairs({r["arm"]: 100 * r["accuracy"] for r in rows})
    stale = {r["arm"]: 100 * r["accuracy_stale_bn"] for r in rows}
    if all(k in stale for k in ("b_tp_gnorm", "c_gcp", "d_slim_cwd")):
        deltas.append(("best(c,d) minus b, every arm with stale BN statistics",
                       max(stale["c_gcp"], stale["d_slim_cwd"]) - stale["b_tp_gnorm"]))
    return deltas + [(f"BN re-estimation minus stale statistics ({r['arm']})",
                      100 * (r["accuracy"] - r["accuracy_stale_bn"])) for r in rows]


def ablation_pairs(acc: Dict[str, float]) -> List[Tuple[str, float]]:
    """(description, difference in points) of each ablation pair present in ``acc`` (arm -> accuracy in points)."""
    pairs = [("variable minus constant sparse rate (gcp)", "c_gcp", "c_const_rate"),
             ("per-group minus global threshold (gcp)", "c_gcp", "c_global_threshold"),
             ("uniform minus global threshold (slim-cwd)", "d_slim_cwd", "d_global_threshold"),
             ("spatial attention minus no distillation", "c_gcp", "c_distill_none"),
             ("channel-wise minus no distillation", "c_distill_cwd", "c_distill_none"),
             ("logit-only minus no distillation", "c_distill_logit", "c_distill_none"),
             ("spatial attention minus channel-wise", "c_gcp", "c_distill_cwd"),
             ("attention plus logit KD minus attention alone", "c_distill_at_logit", "c_gcp")]
    return [(text, acc[a] - acc[b]) for text, a, b in pairs if a in acc and b in acc]


def recipe_gap(acc: Dict[str, float]) -> Optional[Tuple[str, float]]:
    """(label, value) of the issue's comparison: the better recipe arm minus Torch-Pruning's (b). With one of the two
    recipes run, its own gap (a lower bound of the target's figure), labelled as such; None without (b) or a recipe."""
    ran = [(tag, acc[arm]) for tag, arm in (("c", "c_gcp"), ("d", "d_slim_cwd")) if arm in acc]
    if "b_tp_gnorm" not in acc or not ran:
        return None
    label = "best(c,d) - b" if len(ran) == 2 else f"{ran[0][0]} - b"
    return label, max(v for _, v in ran) - acc["b_tp_gnorm"]


def pipeline_targets(rows: List[Dict[str, Any]], base: Dict[str, Any], s: Dict[str, Any], suffix: str = ""):
    targets = []
    gap = recipe_gap({r["arm"]: 100 * r["accuracy"] for r in rows})
    if gap is not None:
        targets.append(target(f"{gap[0]} accuracy, points{suffix}", gap[1], ">=", 0.5))
    macs = [r["macs"] for r in rows]
    targets.append(target(f"MACs spread across arms (max/min - 1){suffix}", max(macs) / min(macs) - 1, "<=", 0.02))
    targets.append(target(f"MACs kept, worst arm vs 0.5 (relative error){suffix}",
                          max(abs(m / base["macs"] - s["keep_macs"]) / s["keep_macs"] for m in macs), "<=", 0.02))
    return targets


def stage_view(row: Dict[str, Any]) -> Tuple[Any, Any, Any]:
    """(accuracy after sparse training, fraction of BN scales below 1e-2, accuracy just after pruning) of any arm;
    None where the arm has no such figure (L1 has no sparse stage; Torch-Pruning's arm reports no BN scales)."""
    stages = row.get("stages")
    if stages:
        return stages["sparse"]["accuracy"], stages["sparse"].get("gamma_below_1e_2"), stages["prune"]["accuracy"]
    return row.get("sparse_accuracy"), None, row.get("pruned_accuracy")


def seed_spread(rows: List[Dict[str, Any]]) -> List[List[Any]]:
    """[scale, what, seeds, mean, std] per sparsity scale over its seeds: each arm's accuracy, best(c,d) - b and each
    ablation difference (paired within a seed), in points (std is the sample standard deviation; None with one
    seed)."""
    import statistics

    out = []
    for k in sorted({r["sparsity_scale"] for r in rows}):
        at = [r for r in rows if r["sparsity_scale"] == k]
        series = {r["arm"]: [] for r in at}
        paired: Dict[str, List[float]] = {}
        for seed in sorted({r["seed"] for r in at}):
            acc = {r["arm"]: 100 * r["accuracy"] for r in at if r["seed"] == seed}
            for arm, value in acc.items():
                series[arm].append(value)
            gap = recipe_gap(acc)
            for text, delta in ([gap] if gap else []) + ablation_pairs(acc):
                paired.setdefault(text, []).append(delta)
        series.update(paired)
        for what, values in series.items():
            std = statistics.stdev(values) if len(values) > 1 else None
            out.append([k, what, len(values), round(statistics.fmean(values), 2), std and round(std, 2)])
    return out


def sweep_markdown(cells, spread, base, targets, s: Dict[str, Any], command: str) -> str:
    def show(v):
        return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    from prunekit.methods.slim_cwd import SlimSparseConfig
    from prunekit.methods.stages import SparseStageConfig

    over_seeds = ["Over seeds (accuracy in points; std: sample standard deviation):", "",
                  *markdown_table(["sparsity scale", "arm or difference", "seeds", "mean", "std"],
                                  [[f"x{k:g}", what, str(n), f"{mean:.2f}", "-" if std is None else f"{std:.2f}"]
                                   for k, what, n, mean, std in spread]), ""] if several_seeds(spread) else []
    lines = [f"Command: `{command}`", "",
             f"Settings: {json.dumps(s)}; the seed and the sparsity scale of each run are in its row. Each arm's "
             f"sparsity strength (gcp's BN-L1 rate s = {SparseStageConfig.s:g}, slim-cwd's s0 = "
             f"{SlimSparseConfig.s:g}, Torch-Pruning's reg = {s['tp_reg']:g}) is multiplied by the scale; "
             f"everything else is as in "
             f"the main table. The original network scores {base['accuracy']:.4f} on these test images.", "",
             *markdown_table(["sparsity scale", "seed", "arm", "accuracy after sparse training",
                              "BN scales below 1e-2", "accuracy just after pruning", "final accuracy", "MACs kept"],
                             [[f"x{c[0]:g}", str(c[1]), c[2], *[show(v) for v in c[3:7]], f"{c[7]:.3f}"]
                              for c in cells]), "",
             *over_seeds, *markdown_target_table(targets)]
    return "\n".join(lines) + "\n"


def several_seeds(spread: List[List[Any]]) -> bool:
    """Whether any line of `seed_spread` averages more than one seed (else the spread table says nothing)."""
    return any(n > 1 for _, _, n, _, _ in spread)
