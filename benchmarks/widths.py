"""Choosing widths before pruning (issue 20): PreCropping on ResNet-20 from scratch (+ TAS from `_widths_tas.py`).

    python benchmarks/widths.py --quick --json out.json                  # under 10 minutes, one seed
    python benchmarks/widths.py --json out.json --md docs/results_widths.md   # 3 seeds, mean and spread

PreCrop table (CIFAR-10 JPEG copy, ResNet-20 with option-B shortcuts so every channel group can change width,
randomly initialised; every arm trains from scratch on the same images, same optimiser, same steps), at 50% and 20%
of the conv/linear parameters:
* precrop-{synflow,snip,synexp}: the layer densities of that source realised as channel widths (engine-built,
  fresh Kaiming init of the new shape), a dense narrower network;
* masks-{synflow,snip}: the same scores' unstructured masks at init, kept as fixed masks on the full network;
* random-{synflow,snip}: random unstructured masks with exactly the same per-layer densities (the paper's claim);
* uniform: one width fraction for every group at the same parameter count.
Every arm starts from the same Kaiming-normal scheme (`reinitialise(..., init="kaiming")`), seeded per seed.
Accuracy, parameters (non-zero for the masked arms), MACs (dense: a masked network runs at the dense cost on commodity
hardware) and eager CPU latency at batch 1 and 32 (masked arms: their masks folded into dense weights).

Targets: PreCrop within 0.5 points of the scored masks at equal params (worst source and budget), faster than them at
batch 32 (worst latency ratio), random masks within 1 point of the scored masks (largest gap; recorded either way).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import (THREADS_HELP, markdown_table, markdown_targets, print_table, print_targets, report,  # noqa: E402
                     target, update_doc_section, write_json)

MODEL = "cifar_resnet20_b"
SOURCES = ("synflow", "snip")
QUICK = {"train_subset": 3000, "test_limit": 1000, "epochs": 2, "seeds": (0,), "budgets": (0.5, 0.2),
         "synflow_iterations": 30, "latency_repeats": 5,
         "latency_rounds": 3}
FULL = {"train_subset": 10000, "test_limit": 2000, "epochs": 6, "seeds": (0, 1, 2), "budgets": (0.5, 0.2),
        "synflow_iterations": 100, "latency_repeats": 10,
        "latency_rounds": 5}


def _task(sizes: Dict[str, Any], seed: int):
    from prunekit.methods.task import TaskConfig, make_task

    return make_task(TaskConfig(model=MODEL, pretrained=False, train_subset=sizes["train_subset"],
                                test_limit=sizes["test_limit"], batch_size=64, eval_batch_size=250,
                                device="cpu", eval_original=False), seed)


def _train(model, task, sizes: Dict[str, Any], seed: int) -> Dict[str, Any]:
    """The one training every arm gets: SGD 0.05 (cosine), momentum 0.9, wd 5e-4, batch 64, same images/steps."""
    from prunekit.train.loop import TrainConfig, train

    cfg = TrainConfig(epochs=sizes["epochs"], lr=0.05, momentum=0.9, weight_decay=5e-4, batch_size=64, seed=seed,
                      device="cpu", progress=False, log_every=1000)
    t0 = time.perf_counter()
    result = train(model, task.train_set, cfg)
    model.eval()
    return {"steps": result.steps, "train_loss": float(result.final_loss),
            "train_seconds": round(time.perf_counter() - t0, 1), "accuracy": task.accuracy(model)}


def _latency(models: Dict[str, Any], rounds: int, repeats: int) -> Dict[str, Dict[str, float]]:
    """Eager CPU latency (1 thread) of every architecture at batch 1 and 32, measured round-robin: each round times
    every model once (median of `repeats` calls) and the best round counts, so a burst of load from other processes
    hits all arms alike instead of one of them."""
    from prunekit.metrics.latency import eager_latency

    best: Dict[str, Dict[str, float]] = {name: {} for name in models}
    inputs = {b: torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(b)) for b in (1, 32)}
    for _ in range(rounds):
        for name, model in models.items():
            for b, x in inputs.items():
                ms = float(eager_latency(model.eval(), x, warmup=2, repeats=repeats, threads=1).median_ms)
                key = f"latency_b{b}_ms"
                best[name][key] = min(best[name].get(key, float("inf")), ms)
    return best


def _cost(model) -> Dict[str, int]:
    from prunekit.metrics.macs import count_macs
    from prunekit.widths.precrop import nonzero_parameters

    return {"params": int(nonzero_parameters(model)),
            "macs": int(count_macs(model.eval(), torch.randn(1, 3, 32, 32)))}


def run_precrop(args) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """Train every arm at every budget and seed. Returns (rows, latency per architecture)."""
    import prunekit
    from prunekit.widths import build_model, reinitialise
    from prunekit.widths.precrop import (PreCropConfig, apply_weight_masks, fold_weight_masks, precrop,
                                         random_masks)

    sizes = _sizes(args)
    rows: List[Dict[str, Any]] = []
    timed: Dict[str, Any] = {}
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for seed in sizes["seeds"]:
        task = _task(sizes, seed)
        items = task.calibration_items(64)
        batch = (torch.stack([i[0] for i in items]), torch.tensor([int(i[1]) for i in items]))
        # the randomly initialised network every score is computed on, and the init of the masked arms: the same
        # Kaiming scheme build_model gives the cropped arms, so no arm differs by its init scheme
        init = reinitialise(task.architecture(), seed, "kaiming")
        analysis = prunekit.analyze(init, x)
        base_cost = _cost(init)
        for d in sizes["budgets"]:
            arms: Dict[str, Any] = {}
            for source in (*SOURCES, "synexp", "uniform"):
                cfg = PreCropConfig(density=source, keep_params=d, synflow_iterations=sizes["synflow_iterations"])
                res = precrop(init, x, cfg, batch=batch, analysis=analysis)
                arms[f"precrop-{source}" if source != "uniform" else "uniform"] = (
                    "channels", build_model(res.config, init, x, seed=seed, init="kaiming"), res)
                if res.masks is not None:
                    masked = apply_weight_masks(copy.deepcopy(init), res.masks)
                    arms[f"masks-{source}"] = ("masks", masked, res)
                    shapes = {n: m.shape for n, m in res.masks.items()}
                    rand = random_masks(res.layers, res.densities, shapes, seed=1000 + seed)
                    arms[f"random-{source}"] = ("masks", apply_weight_masks(copy.deepcopy(init), rand), res)
            for arm, (kind, model, res) in arms.items():
                t0 = time.perf_counter()
                cost = _cost(model)
                trained = _train(model, task, sizes, seed)
                arch = "dense" if kind == "masks" else f"{arm}@{d}"
                if arch not in timed:
                    timed[arch] = fold_weight_masks(copy.deepcopy(model)) if kind == "masks" else model
                row = {"arm": arm, "budget": d, "seed": seed, "kind": kind, "arch": arch, **trained, **cost,
                       "params_keep": cost["params"] / base_cost["params"],
                       "macs_keep": cost["macs"] / base_cost["macs"],
                       "crop_params_fraction": res.facts.get("params_fraction"),
                       "seconds": round(time.perf_counter() - t0, 1)}
                if kind == "channels":
                    row["widths"] = {g: k for g, k in res.config.kept.items() if k < res.config.group_sizes[g]}
                rows.append(row)
                print(f"[precrop] seed {seed} keep {d} {arm:16s} acc {row['accuracy']:.4f} params "
                      f"{row['params']:,} ({row['params_keep']:.3f}) {row['seconds']} s", flush=True)
    latency = _latency(timed, sizes["latency_rounds"], sizes["latency_repeats"])
    for row in rows:
        row.update(latency[row["arch"]])
    return rows, latency


def _sizes(args) -> Dict[str, Any]:
    sizes = dict(QUICK if args.quick else FULL)
    if args.seeds:
        sizes["seeds"] = tuple(int(s) for s in str(args.seeds).split(","))
    if args.epochs:
        sizes["epochs"] = int(args.epochs)
    return sizes


def _stat(rows, arm, budget, key) -> Tuple[float, float]:
    vals = [r[key] for r in rows if r["arm"] == arm and r["budget"] == budget]
    if not vals:
        return float("nan"), float("nan")
    return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def summary(rows) -> List[Dict[str, Any]]:
    """One line per (budget, arm): accuracy mean and spread (points), cost and latency."""
    out = []
    for budget in sorted({r["budget"] for r in rows}, reverse=True):
        for arm in dict.fromkeys(r["arm"] for r in rows if r["budget"] == budget):
            mean, sd = _stat(rows, arm, budget, "accuracy")
            one = next(r for r in rows if r["arm"] == arm and r["budget"] == budget)
            out.append({"budget": budget, "arm": arm, "accuracy_pct": 100 * mean, "spread_pct": 100 * sd,
                        "seeds": sum(1 for r in rows if r["arm"] == arm and r["budget"] == budget),
                        "params": one["params"], "params_keep": one["params_keep"], "macs": one["macs"],
                        "macs_keep": one["macs_keep"], "latency_b1_ms": one["latency_b1_ms"],
                        "latency_b32_ms": one["latency_b32_ms"]})
    return out


def precrop_targets(rows) -> List[Dict[str, Any]]:
    gaps, speed, random_gap = [], [], []
    for budget in sorted({r["budget"] for r in rows}):
        for source in SOURCES:
            pc = _stat(rows, f"precrop-{source}", budget, "accuracy")[0]
            mk = _stat(rows, f"masks-{source}", budget, "accuracy")[0]
            rd = _stat(rows, f"random-{source}", budget, "accuracy")[0]
            gaps.append(100 * (pc - mk))
            random_gap.append(abs(100 * (rd - mk)))
            p32 = _stat(rows, f"precrop-{source}", budget, "latency_b32_ms")[0]
            m32 = _stat(rows, f"masks-{source}", budget, "latency_b32_ms")[0]
            speed.append(p32 / m32)
    return [target("precrop_minus_masks_accuracy_pts_worst", min(gaps), ">=", -0.5),
            target("precrop_over_masks_latency_b32_worst", max(speed), "<=", 1.0),
            target("random_vs_scored_masks_gap_pts_largest", max(random_gap), "<=", 1.0)]


COLUMNS = ["keep", "arm", "acc %", "± %", "seeds", "params", "params keep", "MACs", "MACs keep", "b1 ms", "b32 ms"]


def _table_rows(summ):
    return [[s["budget"], s["arm"], s["accuracy_pct"], s["spread_pct"], s["seeds"], s["params"], s["params_keep"],
             s["macs"], s["macs_keep"], s["latency_b1_ms"], s["latency_b32_ms"]] for s in summ]


def markdown(summ, targets, sizes, command: str) -> str:
    from _common import doc_command

    lines = [f"`{doc_command(command)}`", "",
             f"ResNet-20 (option-B shortcuts) from scratch on CIFAR-10 (JPEG copy): {sizes['train_subset']} training "
             f"images, {sizes['epochs']} epochs (SGD 0.05 cosine, batch 64) for every arm, {sizes['test_limit']} test "
             f"images, seeds {list(sizes['seeds'])} (± is the standard deviation over seeds). `keep` is the fraction "
             f"of conv/linear weights kept; params of masked arms count non-zero weights; MACs and latency of masked "
             f"arms are the dense network's (masks folded into the weights: no speed-up on commodity hardware). "
             f"Latency: eager PyTorch, 1 CPU thread, median.", ""]
    lines += markdown_table(COLUMNS, _table_rows(summ))
    lines += ["", "Targets:", ""] + markdown_targets(targets)
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", default=None, help="write the JSON report here")
    parser.add_argument("--quick", action="store_true", help="one seed, 3000 images, 2 epochs (< 10 min)")
    parser.add_argument("--md", default=None, help="write the results sections into this markdown file")
    parser.add_argument("--skip-tas", action="store_true", help="only the PreCrop table")
    parser.add_argument("--skip-precrop", action="store_true", help="only the TAS table")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default: 0 quick, 0,1,2 full)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs of every PreCrop arm")
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    parser.add_argument("--out-dir", default=None, help="working folder of the TAS runs (default: a temp dir)")
    args = parser.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    sizes = _sizes(args)
    rows: List[Dict[str, Any]] = []
    targets: List[Dict[str, Any]] = []
    summ: List[Dict[str, Any]] = []
    pc_targets: List[Dict[str, Any]] = []
    extra: Dict[str, Any] = {"sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()}}
    if not args.skip_precrop:
        pc_rows, latency = run_precrop(args)
        summ = summary(pc_rows)
        rows += [{"table": "precrop", **r} for r in pc_rows]
        pc_targets = precrop_targets(pc_rows)
        targets += pc_targets
        extra.update(precrop_summary=summ, latency=latency)
        print_table("PreCrop on ResNet-20 from scratch", COLUMNS, _table_rows(summ))
    tas = None
    if not args.skip_tas:
        try:
            import _widths_tas as tas
        except ImportError as exc:
            print(f"TAS section skipped: benchmarks/_widths_tas.py is not available ({exc})")
    if tas is not None:
        tas_rows, tas_targets = tas.run_tas(args)
        rows += [{"table": "tas", **r} for r in tas_rows]
        targets += tas_targets
        extra["tas"] = getattr(args, "tas_extra", None)
    print_targets(targets)
    payload = report("widths", argv, start, rows, targets, **extra)
    if args.json:
        write_json(args.json, payload)
    if args.md:
        if summ:
            update_doc_section(args.md, "widths-precrop", "PreCropping on ResNet-20 from scratch",
                               markdown(summ, pc_targets, sizes, payload["command"]))
        if tas is not None and hasattr(tas, "markdown") and hasattr(tas, "plot"):
            md = Path(args.md)
            fig = tas.plot(args.tas_extra, Path(__file__).resolve().parent.parent / "docs" / "figures" /
                           "tas_widths.png")
            rel = Path("figures") / fig.name if md.parent.name == "docs" else fig
            tas_names = {t["name"] for t in tas_targets}
            update_doc_section(md, "widths-tas", "TAS on ResNet-20 at half the MACs",
                               tas.markdown(tas_rows, [t for t in targets if t["name"] in tas_names],
                                            args.tas_extra, str(rel), payload["command"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
