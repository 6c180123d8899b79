"""PAGCP on a two-head CIFAR classifier: multitask oracle vs uniform L1, global L1 and a single-task oracle.

The model: a pretrained CIFAR ResNet trunk (option A) with the 10-class head and a vehicle versus animal head,
trained jointly (`prunekit.models.cifar_multihead.train_joint`, cached). Every method prunes it to at most 50% of
its MACs (`budget: {target: macs, keep_fraction: 0.5}`): PAGCP in rounds of sweep + short fine-tuning (the paper's
iterative rounds), the other arms to the MACs PAGCP reached; every arm gets the same fine-tuning steps. Reported per
method: both heads' accuracy right after pruning and after fine-tuning, MACs, params, latency (batch 1), and for
PAGCP the per-unit sweep log (ratio and the task that stopped each unit). The oracle's held-out images are the
CIFAR-10 test split's tail, disjoint from the images the accuracies are measured on.

The same comparison on a YOLOv8-style detector with its loss components (box, cls, dfl) as tasks
(`_pagcp_detect.py`; `--skip-detector` leaves it out), and the cost of one sweep on the ResNet-56 trunk with and
without the oracle's prefix replay (`--skip-cost`). `--md` also writes the sweep plot next to the page.

    python benchmarks/pagcp.py --quick --json out.json        # ResNet-20 trunk, small detector (CPU)
    python benchmarks/pagcp.py --json out.json --md           # ResNet-56 trunk, longer training, larger detector
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (THREADS_HELP, markdown_table, markdown_target_table, median_latency_ms,  # noqa: E402
                     print_table, print_targets, report, target, write_json)

import prunekit  # noqa: E402
from prunekit import planning  # noqa: E402
from prunekit.allocate.pagcp import Pagcp  # noqa: E402
from prunekit.graph.types import Budget  # noqa: E402
from prunekit.io import atomic_write_text, save_tensors  # noqa: E402
from prunekit.metrics.macs import count_macs  # noqa: E402
from prunekit.models import build  # noqa: E402
from prunekit.models.cifar_multihead import (class_loss, coarse_loss, two_task_batch, task_accuracies,  # noqa: E402
                                             train_joint)
from prunekit.paths import cache_root  # noqa: E402
from prunekit.planning.cost import macs_cost  # noqa: E402

SETTINGS = {
    "quick": dict(depth=20, train_steps=150, finetune_steps=64, batch=64, held_out_batches=4, test_images=1000,
                  ratio_steps=19, tolerance=0.2, allowance=20.0, max_rounds=4, cost_batches=1, cost_ratios=2),
    "full": dict(depth=56, train_steps=1500, finetune_steps=500, batch=128, held_out_batches=4, test_images=9000,
                 ratio_steps=19, tolerance=0.2, allowance=20.0, max_rounds=6, cost_batches=4, cost_ratios=3),
}
KEEP_MACS = 0.5  # the budget: PAGCP's oracle decides whether it is reachable
TASKS = ("class", "vehicle")


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def make_batches(dataset, indices, batch: int) -> List[tuple]:
    """Two-task batches (`two_task_batch`) over `indices` of `dataset`, deterministic."""
    out = []
    for start in range(0, len(indices) - batch + 1, batch):
        items = [dataset[int(i)] for i in indices[start:start + batch]]
        x = torch.stack([it[0] for it in items])
        y = torch.tensor([int(it[1]) for it in items])
        out.append(two_task_batch(x, y))
    return out


def data(s: Dict[str, Any]):
    """(train batches, fine-tune batches, held-out batches, test batches)."""
    from prunekit.data.cifar10 import cifar10_jpg

    train = cifar10_jpg("train", augment="standard", normalize="imagenet")
    test = cifar10_jpg("test", normalize="imagenet")
    perm = torch.randperm(49000, generator=torch.Generator().manual_seed(0))
    b = s["batch"]
    train_b = make_batches(train, perm[: s["train_steps"] * b], b)
    ft_b = make_batches(train, perm[-s["finetune_steps"] * b:], b)
    # the oracle's held-out batches come from the test split's tail, disjoint from the accuracy images: the
    # pretrained trunk saw every training image (its losses there are memorised), and the training split is stored
    # by class, so its tail is one class only
    n_held = s["held_out_batches"] * b
    if s["test_images"] + n_held > len(test):
        raise ValueError(f"pagcp benchmark: test_images {s['test_images']} + held-out {n_held} exceed the test split")
    held = make_batches(test, torch.arange(len(test) - n_held, len(test)), b)
    test_b = make_batches(test, torch.arange(s["test_images"]), 100)
    return train_b, ft_b, held, test_b


def trained_model(s: Dict[str, Any], train_b, retrain: bool) -> torch.nn.Module:
    """The jointly trained two-head model (cached as safetensors)."""
    name = f"cifar_resnet{s['depth']}_multihead"
    path = cache_root() / "pagcp" / f"{name}_{s['train_steps']}x{s['batch']}.safetensors"
    if path.exists() and not retrain:
        return build(name, weights=str(path)).eval()
    model = build(name)
    train_joint(model, train_b, lr=0.01, progress=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors(path, {k: v.contiguous() for k, v in model.state_dict().items()})
    return model.eval()


def held_out_losses(model, held) -> Dict[str, float]:
    with torch.no_grad():
        outs = [(model(b[0]), b) for b in held]
    return {"class": sum(float(class_loss(o, b)) for o, b in outs) / len(outs),
            "vehicle": sum(float(coarse_loss(o, b)) for o, b in outs) / len(outs)}


def latency_ms(model, repeats: int = 30) -> float:
    return median_latency_ms(model, torch.randn(1, 3, 32, 32), repeats)


def prune_baseline(model, allocator: str, example, keep: float) -> tuple:
    config = planning.PlanConfig(criterion="l1", allocator=allocator,
                                 budget=Budget(target="macs", keep_fraction=keep))
    plan = prunekit.plan(model, example, config)
    return prunekit.apply(model, plan, example), {}


def prune_pagcp(model, tasks: Dict[str, Any], held, example, s, keep: Optional[float] = None,
                forward=None) -> tuple:
    """PAGCP with the settings' tolerance and allowance: every removal the oracle passed (`keep` None), or the
    cheapest-loss-per-MAC part of them that keeps `keep` of the MACs (all of them when that is not reachable).
    `forward(model, batch)`: how the oracle runs the model (default: ``model(batch[0])``)."""
    from prunekit.errors import ConfigError

    analysis = planning.analyse(model, example)
    options = {"tolerance": s["tolerance"], "allowance": s["allowance"], "ratio_steps": s["ratio_steps"]}
    policy = groups = scores = None
    for budget in ([Budget(target="macs", keep_fraction=keep)] if keep else []) + [Budget(ratio=0.999)]:
        config = planning.PlanConfig(criterion="l1", allocator={"name": "pagcp", **options}, budget=budget)
        if policy is None:  # one sweep: the fallback budget reuses it (the policy keeps its result)
            groups = planning.eligibility(analysis, config)
            scores = planning.scoring(model, groups, config, example)
            # MACs order the units and price each one's loss (a budget search passes its own MACs cost model too)
            extra = {"forward": forward} if forward is not None else {}
            policy = Pagcp(**options).attach(model, tasks, held, cost=macs_cost(model, groups, example), **extra)
        try:
            allocation = planning.allocate(model, groups, scores, config, example, policy=policy)
        except ConfigError as exc:  # the oracle's safe removals do not reach the MACs of the other arm
            print(f"pagcp ({'+'.join(tasks)}): {exc}; keeping every safe removal")
            continue
        removed = planning.selection(groups, policy.sweep_scores(scores), allocation)
        plan = planning.make_plan(model, analysis, removed, allocation, config, example, pagcp=policy.provenance())
        return prunekit.apply(model, plan, example), {"allowance": s["allowance"], **policy.provenance()}
    raise AssertionError("unreachable")


def prune_rounds(model, tasks: Dict[str, Any], held, example, s, keep_final: float, ft_b) -> tuple:
    """PAGCP rounds (the paper's step 6): sweep and prune, fine-tune briefly, sweep the pruned model again, until
    it keeps at most `keep_final` of the original MACs or `max_rounds` rounds ran. At most half of the fine-tuning
    batches go to the rounds; the rest is the final fine-tuning (so every arm gets the same number of steps).

    Returns:
        (pruned model right after its last round, log, fine-tuning batches not used yet).
    """
    base = count_macs(model, example[:1])
    per_round = len(ft_b) // (2 * s["max_rounds"])
    current, used, rounds, last = model, 0, [], {}
    for r in range(s["max_rounds"]):
        if r:
            current = train_joint(current, ft_b[used:used + per_round], lr=0.01)
            used += per_round
        keep = keep_final * base / count_macs(current, example[:1])
        before = held_out_losses(current, held)
        pruned, last = prune_pagcp(current, tasks, held, example, s, min(keep, 0.99))
        after = held_out_losses(pruned, held)
        rounds.append({"round": r + 1, "macs_kept": count_macs(pruned, example[:1]) / base, "seconds": last["seconds"],
                       "loss_ratio": {t: after[t] / before[t] for t in after}})
        print(f"pagcp ({'+'.join(tasks)}) round {r + 1}: {rounds[-1]}")
        current = pruned
        if rounds[-1]["macs_kept"] <= keep_final * 1.02:
            break
    return current, {**last, "rounds": rounds}, ft_b[used:]


def run(args) -> Dict[str, Any]:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    s = SETTINGS["quick" if args.quick else "full"]
    train_b, ft_b, held, test_b = data(s)
    model = trained_model(s, train_b, args.retrain)
    example = held[0][0][:2]
    base_macs, base_params = count_macs(model, example[:1]), sum(p.numel() for p in model.parameters())
    base_acc = task_accuracies(model, test_b)
    base_loss = held_out_losses(model, held)
    # PAGCP first: the 50% MACs budget where its oracle allows it, else every safe removal; every other arm is
    # then pruned to the MACs PAGCP reached (equal MACs)
    both = {"class": class_loss, "vehicle": coarse_loss}
    keep = {}
    methods = {
        "PAGCP (class + vehicle)": lambda: prune_rounds(model, both, held, example, s, KEEP_MACS, ft_b),
        "uniform L1": lambda: prune_baseline(model, "uniform", example, keep["macs"]) + (ft_b,),
        "global L1": lambda: prune_baseline(model, "global", example, keep["macs"]) + (ft_b,),
        "PAGCP single-task (class)": lambda: prune_rounds(model, {"class": class_loss}, held, example, s,
                                                          keep["macs"], ft_b),
    }
    rows = [{"method": "unpruned", "class_pruned": base_acc[0], "vehicle_pruned": base_acc[1],
             "class_ft": None, "vehicle_ft": None, "macs": base_macs, "params": base_params,
             "latency_ms": latency_ms(model), "held_out_loss": base_loss}]
    logs = {}
    for name, make in methods.items():
        t0 = time.perf_counter()
        pruned, log, ft_left = make()
        prune_s = time.perf_counter() - t0
        acc = task_accuracies(pruned, test_b)
        loss = held_out_losses(pruned, held)
        tuned = train_joint(copy.deepcopy(pruned), ft_left, lr=0.01, progress=True)
        acc_ft = task_accuracies(tuned, test_b)
        rows.append({"method": name, "class_pruned": acc[0], "vehicle_pruned": acc[1], "class_ft": acc_ft[0],
                     "vehicle_ft": acc_ft[1], "macs": count_macs(pruned, example[:1]),
                     "params": sum(p.numel() for p in pruned.parameters()), "latency_ms": latency_ms(pruned),
                     "held_out_loss": loss, "prune_seconds": prune_s})
        if log:
            logs[name] = log
        keep.setdefault("macs", rows[-1]["macs"] / base_macs + 1e-3)
        print(f"{name}: pruned {acc}, fine-tuned {acc_ft} ({prune_s:.1f}s to prune)")
    by = {r["method"]: r for r in rows}
    # the worst task is the one that lost most accuracy against the unpruned model (points)
    worst = lambda r: min(r["class_ft"] - base_acc[0], r["vehicle_ft"] - base_acc[1])  # noqa: E731
    multi, single = by["PAGCP (class + vehicle)"], by["PAGCP single-task (class)"]
    allowance = logs["PAGCP (class + vehicle)"]["allowance"]
    last_round = logs["PAGCP (class + vehicle)"]["rounds"][-1]
    within = max(last_round["loss_ratio"][t] / allowance for t in TASKS)
    targets = [
        target("PAGCP worst task's accuracy drop after FT minus uniform L1's (points)",
               worst(multi) - worst(by["uniform L1"]), ">=", 0.0),
        target("PAGCP worst task's accuracy drop after FT minus global L1's (points)",
               worst(multi) - worst(by["global L1"]), ">=", 0.0),
        target("PAGCP held-out loss / (allowance x loss before the round), worst task, last round, before FT",
               within, "<=", 1.0),
        target("vehicle accuracy lost by single-task oracle minus by multitask PAGCP, before FT (points)",
               multi["vehicle_pruned"] - single["vehicle_pruned"], ">=", 0.0),
        target("MACs kept by PAGCP (fraction)", multi["macs"] / base_macs, "<=", KEEP_MACS * 1.02),
    ]
    result = {"mode": "quick" if args.quick else "full", "settings": {k: list(v) if isinstance(v, tuple) else v
                                                                       for k, v in s.items()},
              "base_macs": base_macs, "rows": rows, "targets": targets, "pagcp_logs": logs}
    if not args.skip_cost:
        result["sweep_cost"] = sweep_cost(s, held)
    if not args.skip_detector:
        from _pagcp_detect import detector_part

        result["detector"] = detector_part(result["mode"], prune_pagcp, prune_baseline, args.retrain)
        result["targets"] = result["targets"] + result["detector"]["targets"]
    return result


def sweep_cost(s: Dict[str, Any], held) -> Dict[str, Any]:
    """Seconds per unit of one PAGCP sweep on the ResNet-56 trunk (pretrained; its second head is untrained, which
    does not change the cost), with the oracle replaying each unit's front (`cache_inputs`) and without. The
    tolerance is out of reach, so every unit runs the whole grid and both sweeps do the same evaluations."""
    from prunekit.allocate.pagcp_sweep import TaskOracle, sweep
    from prunekit.importance.base import create

    model = build("cifar_resnet56_multihead").eval()
    example = held[0][0][:2]
    analysis = planning.analyse(model, example)
    config = planning.PlanConfig(allocator={"name": "pagcp", "progress": False}, budget=Budget(ratio=0.999))
    groups = planning.eligibility(analysis, config)
    caps = Pagcp().caps(groups)
    criterion = create("l1")
    oracle = TaskOracle({"class": class_loss, "vehicle": coarse_loss}, held[:s["cost_batches"]])
    grid = [0.25, 0.5, 0.75][: s["cost_ratios"]]
    out = {"model": "cifar_resnet56_multihead", "units": sum(1 for g in groups if caps.get(g.id, 0) > 0),
           "ratios": len(grid), "images": sum(len(b[0]) for b in oracle.batches)}
    for flag in (True, False):
        result = sweep(model, groups, caps, oracle, None, lambda m, g: criterion.score(m, [g], None)[g.id], grid,
                       1e6, 1e7, progress=False, cache_inputs=flag)
        out["cached" if flag else "full_forward"] = result.seconds / max(len(result.records), 1)
    out["speedup"] = out["full_forward"] / out["cached"]
    print(f"sweep cost on ResNet-56: {out}")
    return out


def _rounds_and_logs(lines: List[str], logs: Dict[str, Any]) -> None:
    for name, log in logs.items():
        lines += ["", f"### Rounds: {name}", ""]
        lines += markdown_table(["round", "MACs kept", "sweep s"] + [f"{t} loss ratio" for t in
                                                                     log["rounds"][0]["loss_ratio"]],
                                [[r["round"], r["macs_kept"], r["seconds"], *r["loss_ratio"].values()]
                                 for r in log["rounds"]])
        lines += ["", f"### Sweep log of the last round: {name}", "",
                  f"Allowance {log['allowance']}, tolerance {log['config']['tolerance']}, decay lambda "
                  f"{log['decay']:.4f}; {log['seconds']:.1f} s in all, {log['seconds_per_unit']:.2f} s per unit.", ""]
        lines += markdown_table(["unit", "size", "ratio", "stopped by", "tolerance", "kept by top-k", "s"],
                                [[u["group"], u["size"], u["ratio"], u["stopped_by"] or "(grid end)", u["tolerance"],
                                  "yes" if u["kept_by_topk"] else "no", u["seconds"]] for u in log["units"]])


def markdown(result: Dict[str, Any], plot_name: Optional[str] = None) -> str:
    s = result["settings"]
    lines = [f"# PAGCP on a two-head CIFAR ResNet-{s['depth']} and a YOLOv8-style detector ({result['mode']})", "",
             "Generated by `python benchmarks/pagcp.py" + (" --quick" if result["mode"] == "quick" else "") +
             " --md docs/results_pagcp.md` (or `--render JSON` from its `--json` report).", "",
             "## Two-head classifier", "",
             "Trunk: pretrained option-A CIFAR ResNet; heads: 10 classes and vehicle versus animal, trained jointly "
             f"({s['train_steps']} steps of {s['batch']}). The oracle's held-out batches are "
             f"{s['held_out_batches']} x {s['batch']} CIFAR-10 test images from the end of the split, disjoint from "
             f"the {s['test_images']} test images the accuracies are measured on. PAGCP (tolerance {s['tolerance']}, "
             f"allowance {s['allowance']} per round) runs rounds of sweep + short fine-tuning until the model keeps "
             f"at most {KEEP_MACS:.0%} of the MACs (at most {s['max_rounds']} rounds; the last round gets the budget "
             "exactly where its oracle allows it); uniform L1, global L1 (one shot) and single-task PAGCP (rounds) "
             "are then pruned to the MACs PAGCP reached (equal MACs). Every arm gets the same number of "
             f"fine-tuning steps in all ({s['finetune_steps']} steps). The worst task of a method is the head that "
             "lost most accuracy against the unpruned model. Latency: batch 1, one thread.", ""]
    cols = ["method", "class (pruned)", "vehicle (pruned)", "class (FT)", "vehicle (FT)", "MACs (M)", "params (k)",
            "latency (ms)"]
    lines += markdown_table(cols, [[r["method"], r["class_pruned"], r["vehicle_pruned"], r["class_ft"],
                                    r["vehicle_ft"], r["macs"] / 1e6, r["params"] / 1e3, r["latency_ms"]]
                                   for r in result["rows"]])
    det = result.get("detector")
    if det:
        d = det["settings"]
        lines += ["", "## YOLOv8-style detector (tasks: box, cls and dfl loss components)", "",
                  f"YOLOv8-n layout at width {d['width']}, trained from scratch on {d['n_train']} cifar_mosaic "
                  f"canvases ({d['img']} px, {d['epochs']} epochs, cached). The oracle's held-out batches are "
                  f"{d['n_held']} validation canvases, disjoint from the {d['n_test']} the mAPs are measured on. "
                  f"PAGCP (tolerance {d['tolerance']}, allowance {d['allowance']}, {d['ratio_steps']} ratios, at most "
                  f"{d['max_rounds']} rounds) prunes to at most 50% of the MACs; the other arms are pruned to the "
                  f"MACs it reached. Fine-tuning: {d['ft_epochs']} epochs on {d['n_ft']} canvases for every arm "
                  "(PAGCP's rounds use part of them between rounds). The detector is small and briefly trained "
                  f"(unpruned mAP50 {det['rows'][0]['map50_pruned']:.1f}), so its losses react little to pruning "
                  "and the oracle lets many units run to the end of the grid: these rows show the mechanism (which "
                  "component binds, what a cls-only oracle does to localisation), not detection quality.", ""]
        lines += markdown_table(["method", "mAP50 (pruned)", "mAP50-95 (pruned)", "mAP50 (FT)", "mAP50-95 (FT)",
                                 "box loss", "cls loss", "dfl loss", "MACs (M)", "params (k)", "latency (ms)"],
                                [[r["method"], r["map50_pruned"], r["map50_95_pruned"], r["map50_ft"],
                                  r["map50_95_ft"], *(r["held_out_loss"][t] for t in ("box", "cls", "dfl")),
                                  r["macs"] / 1e6, r["params"] / 1e3, r["latency_ms"]] for r in det["rows"]])
    lines += ["", "## Targets", ""] + markdown_target_table(result["targets"])
    cost = result.get("sweep_cost")
    if cost:
        lines += ["", "## Sweep cost", "",
                  f"One sweep on {cost['model']} ({cost['units']} units, {cost['ratios']} ratios each, "
                  f"{cost['images']} held-out images, one thread): {cost['cached']:.2f} s per unit when the oracle "
                  f"replays each unit's front (the default, `cache_inputs`), {cost['full_forward']:.2f} s per unit "
                  f"with full forward passes ({cost['speedup']:.2f}x; both in the same run, so the ratio holds on a "
                  "loaded machine where the absolute seconds do not). Per-unit seconds of every sweep are in the "
                  "logs below (the detector's too)."]
    if plot_name:
        lines += ["", "## Ratio and binding task per unit (last round of each multitask PAGCP)", "",
                  "Left: the ratio the oracle passed for each unit, in sweep order, coloured by the task whose "
                  "held-out loss stopped it (grid end: it never left its tolerance up to the last ratio). Right: the "
                  "MACs that removal saves; the round's MACs budget applies the cheapest loss per MAC first and may "
                  "apply less.", "", f"![PAGCP sweep]({plot_name})"]
    lines += ["", "## PAGCP logs: classifier"]
    _rounds_and_logs(lines, result["pagcp_logs"])
    if det:
        lines += ["", "## PAGCP logs: detector"]
        _rounds_and_logs(lines, det["pagcp_logs"])
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="ResNet-20 trunk, short training (CPU smoke run)")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--md", nargs="?", const="auto", default=None,
                        help="write the markdown page (default docs/results_pagcp[_quick].md)")
    parser.add_argument("--retrain", action="store_true", help="ignore the cached trained models")
    parser.add_argument("--skip-detector", action="store_true", help="leave out the detector part")
    parser.add_argument("--skip-cost", action="store_true", help="leave out the ResNet-56 sweep-cost measurement")
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    parser.add_argument("--render", default=None, metavar="JSON", help="rebuild the markdown from a JSON report")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    result = json.loads(Path(args.render).read_text()) if args.render else run(args)
    print_table("PAGCP benchmark", ["method", "class pruned", "veh pruned", "class FT", "veh FT", "MACs", "params",
                                    "ms"],
                [[r["method"], r["class_pruned"], r["vehicle_pruned"], r["class_ft"], r["vehicle_ft"], r["macs"],
                  r["params"], r["latency_ms"]] for r in result["rows"]])
    print_targets(result["targets"])
    if args.json and not args.render:
        write_json(args.json, report("pagcp", sys.argv[1:] if argv is None else argv, start, result["rows"],
                                     result["targets"], **{k: v for k, v in result.items()
                                                           if k not in ("targets", "rows")}))
    if args.md:
        path = args.md if args.md != "auto" else str(
            repo_root() / "docs" / ("results_pagcp_quick.md" if result["mode"] == "quick" else "results_pagcp.md"))
        plot = Path(path).with_name(Path(path).stem + "_sweep.png")
        logs = {f"classifier, {k}": v for k, v in result["pagcp_logs"].items() if "single" not in k}
        if result.get("detector"):
            logs.update({f"detector, {k}": v for k, v in result["detector"]["pagcp_logs"].items() if "single" not in k})
        from prunekit.allocate.pagcp_plot import plot_sweep

        plot_sweep(logs, plot)
        atomic_write_text(path, markdown(result, plot.name))
    return 0 if all(t["passed"] for t in result["targets"]) else 1


if __name__ == "__main__":
    sys.exit(main())
