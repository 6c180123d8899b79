"""TAS (paper 7) on the pretrained CIFAR ResNet-20 at half the MACs: searched widths + KD vs uniform widths + the
same KD vs the engine's `global` allocator on the pretrained network + the same fine-tuning.

    python benchmarks/_widths_tas.py --quick --json out.json      # a few minutes, one seed
    python benchmarks/_widths_tas.py --json out.json --md docs/results_widths.md   # 3 seeds, plot into docs/figures

Arms (CIFAR-10 JPEG copy; every arm trains on the same images for the same steps with the same loss,
CE + 9 * logit KD at T = 4 from the unpruned pretrained ResNet-20):
* tas: the `tas` recipe: bi-level width search on a 50/50 split of the training subset (supernet started from the
  pretrained weights), argmax widths built fresh by the engine, trained from scratch with KD;
* uniform: every searched group at one width fraction, chosen for the MACs of the tas network, fresh, same KD;
* global: the engine's `global` allocator (L1 scores) on the pretrained network at the same MACs, fine-tuned with the
  same KD and images (the "prune a trained network" alternative TAS replaces).
`run_tas(args)` returns (rows, targets) for `benchmarks/widths.py`; run alone, this script prints and writes them.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import (THREADS_HELP, markdown_table, markdown_targets, print_table, print_targets, report,  # noqa: E402
                     target, update_doc_section, write_json)

MODEL = "cifar_resnet20"
QUICK = {"train_subset": 1200, "test_limit": 500, "search_epochs": 2, "train_epochs": 2, "seeds": (0,),
         "arch_lr": 0.05}
# sized for a shared 2-core CPU (about 15 minutes a seed there); the paper searches 600 epochs and trains 300
FULL = {"train_subset": 2000, "test_limit": 2000, "search_epochs": 2, "train_epochs": 2, "seeds": (0, 1, 2),
        "arch_lr": 0.05}


def _sizes(args) -> Dict[str, Any]:
    sizes = dict(QUICK if getattr(args, "quick", False) else FULL)
    seeds = getattr(args, "seeds", None)
    if seeds:
        sizes["seeds"] = tuple(int(s) for s in (seeds if isinstance(seeds, (list, tuple)) else str(seeds).split(",")))
    return sizes


def _task_section(sizes: Dict[str, Any], threads: int) -> Dict[str, Any]:
    return {"model": MODEL, "dataset": "cifar10", "pretrained": True, "train_subset": sizes["train_subset"],
            "test_limit": sizes["test_limit"], "batch_size": 64, "num_threads": threads, "latency_repeats": 5,
            "eval_original": True}


def _train_section(sizes: Dict[str, Any]) -> Dict[str, Any]:
    # CE + 9 * KD at lr 0.01 is the paper's 0.1 * CE + 0.9 * KD at lr 0.1
    return {"epochs": sizes["train_epochs"], "lr": 0.01, "weight_decay": 5e-4, "warmup_steps": 10,
            "checkpoint_every": 1, "bn_recalibrate": 1024}


def _uniform_config(analysis, model, x, searched, macs: float, model_spec):
    """The uniform width fraction over the searched groups whose MACs come closest to `macs` (bisection)."""
    from prunekit.widths.config import WidthConfig
    from prunekit.widths.tas import ExpectedMacs

    cost = ExpectedMacs(model, searched, x)

    def macs_at(f: float) -> float:
        return float(cost({s.id: torch.tensor(float(max(1, round(f * s.size)))) for s in searched}))

    lo, hi = 0.05, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if macs_at(mid) < macs else (lo, mid)
    f = min((lo, hi), key=lambda v: abs(macs_at(v) - macs))
    return WidthConfig.from_fractions(analysis, {s.id: f for s in searched}, model=model, inputs=x,
                                      model_spec=model_spec, method="uniform", fraction=f), f


def _train_with_kd(recipe_cfg, student, folder: Path, seed: int) -> Dict[str, Any]:
    """The tas recipe's training stage (`finetune_stage`) on another student: same loop, loss, data and steps."""
    from prunekit.methods.base import StageContext, save_stage_model
    from prunekit.methods.stages import finetune_stage
    from prunekit.methods.task import make_task
    from prunekit.methods.tas import TASRecipe

    recipe = TASRecipe(recipe_cfg)
    task = make_task(recipe.config.task, seed)
    src = folder / "student"
    save_stage_model(src / "model", student[0], student[1])
    ctx = StageContext(recipe, task, folder / "train", {"search": src})
    out = finetune_stage(ctx, recipe.config.train, student_stage="search", teacher_stage="search")
    return {**out.info, **task.cost(out.model)}


def run_tas(args) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """Run the three arms over the seeds. Returns (rows, targets); also sets ``args.tas_extra`` (search history,
    per-layer widths) for the plot."""
    import prunekit
    from prunekit.graph.types import Budget
    from prunekit.methods.base import plan_to_budget
    from prunekit.methods.task import make_task, TaskConfig
    from prunekit.methods.tas import TASRecipe
    from prunekit.widths.tas import build_searched, searchable_groups

    threads = int(getattr(args, "threads", 1) or 1)
    torch.set_num_threads(threads)
    sizes = _sizes(args)
    root = Path(getattr(args, "out_dir", None) or tempfile.mkdtemp(prefix="tas_bench_"))
    rows: List[Dict[str, Any]] = []
    extra: Dict[str, Any] = {"searches": {}, "sizes": {k: list(v) if isinstance(v, tuple) else v
                                                       for k, v in sizes.items()}}
    for seed in sizes["seeds"]:
        cfg = {"out_dir": str(root / f"tas_s{seed}"), "seed": seed, "task": _task_section(sizes, threads),
               "search": {"epochs": sizes["search_epochs"], "batch_size": 64, "arch_lr": sizes["arch_lr"],
                          "lr": 0.02, "keep_macs": 0.5, "tolerance": 0.025, "log_every": 2},
               "train": _train_section(sizes)}
        t0 = time.perf_counter()
        result = TASRecipe(cfg).run()
        search = result["stages"]["search"]
        base = result["original"]
        rows.append({"arm": "tas", "seed": seed, "accuracy": result["accuracy"], "macs_keep": result["macs_keep"],
                     "params_keep": result["params_keep"], "search_images": sizes["train_subset"],
                     "train_steps": result["stages"]["train"]["steps"], "derived_from": search["derived_from"],
                     "seconds": round(time.perf_counter() - t0, 1), "original_accuracy": base.get("accuracy")})
        extra["searches"][str(seed)] = {"history": search["history"], "widths": search["widths"],
                                        "sizes": {k: max(v) for k, v in search["searched_groups"].items()}}
        task = make_task(TaskConfig(**cfg["task"]), seed)
        model, x = task.build(), task.example_inputs(1)
        analysis = prunekit.analyze(model, x)
        searched = searchable_groups(analysis.groups)
        macs = result["macs"]
        # uniform widths at the tas network's MACs, fresh, same KD training
        uni, frac = _uniform_config(analysis, model, x, searched, macs, task.model_spec())
        torch.manual_seed(seed)
        student = build_searched(uni, analysis, task.architecture(), x, seed=seed)
        info = _train_with_kd(cfg, student, root / f"uniform_s{seed}", seed)
        rows.append({"arm": "uniform", "seed": seed, "accuracy": info["accuracy"], "macs_keep": info["macs"] /
                     base["macs"], "params_keep": info["params"] / base["params"], "fraction": frac,
                     "train_steps": info["steps"]})
        # the engine's global allocator on the pretrained network, same MACs, same fine-tuning
        plan = plan_to_budget(model, x, analysis, "l1", "global",
                              Budget(target="macs", keep_fraction=macs / base["macs"]), model_spec=task.model_spec())
        pruned = prunekit.apply(copy.deepcopy(model), plan, x, analysis=analysis)
        info = _train_with_kd(cfg, (pruned, plan), root / f"global_s{seed}", seed)
        rows.append({"arm": "global", "seed": seed, "accuracy": info["accuracy"], "macs_keep": info["macs"] /
                     base["macs"], "params_keep": info["params"] / base["params"], "train_steps": info["steps"]})
    args.tas_extra = extra
    return rows, _targets(rows)


def _mean(rows, arm, key):
    vals = [r[key] for r in rows if r["arm"] == arm]
    return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def _targets(rows) -> List[Dict[str, Any]]:
    tas, _ = _mean(rows, "tas", "accuracy")
    uni, _ = _mean(rows, "uniform", "accuracy")
    err = max(abs(r["macs_keep"] - 0.5) / 0.5 for r in rows if r["arm"] == "tas")
    return [target("tas_kd_minus_uniform_kd_accuracy_points", 100 * (tas - uni), ">=", 0.0),
            target("tas_derived_macs_rel_error_to_target", err, "<=", 0.05)]


def summary_rows(rows) -> List[List[Any]]:
    """One line per arm: mean +- std of accuracy (%), MACs and params kept, seeds."""
    out = []
    for arm in ("tas", "uniform", "global"):
        acc, sd = _mean(rows, arm, "accuracy")
        out.append([arm, f"{100 * acc:.2f} ± {100 * sd:.2f}", _mean(rows, arm, "macs_keep")[0],
                    _mean(rows, arm, "params_keep")[0], sum(1 for r in rows if r["arm"] == arm)])
    return out


SUMMARY_COLUMNS = ["arm", "accuracy % (mean ± std)", "MACs kept", "params kept", "seeds"]


def plot(extra: Dict[str, Any], path: Path) -> Path:
    """Searched width fraction per group (one line per seed) and expected / argmax MACs over the search."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    for i, (seed, s) in enumerate(extra["searches"].items()):
        color = f"C{i}"
        ids = list(s["widths"])
        ax1.plot(range(len(ids)), [s["widths"][g] / s["sizes"][g] for g in ids], "o-", color=color,
                 label=f"seed {seed}")
        ax1.set_xticks(range(len(ids)), ids, rotation=60, ha="right", fontsize=7)
        steps = [h["step"] for h in s["history"]]
        ax2.plot(steps, [h["expected_keep"] for h in s["history"]], "-", color=color, label=f"expected, seed {seed}")
        ax2.plot(steps, [h["argmax_keep"] for h in s["history"]], "--", color=color, alpha=0.6,
                 label=f"argmax, seed {seed}")
    ax1.axhline(0.5, color="grey", lw=0.5)
    ax1.set_ylabel("kept fraction")
    ax1.set_title("TAS searched widths (ResNet-20, half MACs)")
    ax1.legend(fontsize=7)
    ax2.axhspan(0.475, 0.5, color="green", alpha=0.15, label="[R - t, R]")
    ax2.set_xlabel("search step")
    ax2.set_ylabel("MACs kept")
    ax2.set_title("expected and argmax MACs during the search")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(rows, targets, extra, figure: str, command: str) -> str:
    sz = extra.get("sizes", {})
    steps = max((h["step"] for s in extra["searches"].values() for h in s["history"]), default=0)
    lines = [f"`{command}`", "",
             f"CIFAR-10 (JPEG copy), pretrained option-A ResNet-20, target half the MACs. Same training images "
             f"({sz.get('train_subset')}), steps ({sz.get('train_epochs')} epochs, batch 64) and loss (CE + 9 * logit "
             f"KD, T = 4, SGD lr 0.01, teacher: the unpruned pretrained ResNet-20) for every arm; tas and uniform are "
             f"trained from scratch, global is fine-tuned from the pretrained weights; {sz.get('test_limit')} test "
             f"images; seeds {sz.get('seeds')} (± is the standard deviation). The tas search runs {steps} bi-level "
             f"steps on a 50/50 split of the same images (the paper: 600 epochs), far too few for the logits to "
             f"separate (the argmax MACs still jump around R, right plot), so its widths are close to a random "
             f"draw inside the band; the derived widths are the last argmax inside [R - t, R] (t = 0.025).", ""]
    lines += markdown_table(SUMMARY_COLUMNS, summary_rows(rows)) + [""]
    lines += markdown_targets(targets) + ["", f"![TAS widths]({figure})", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few minutes, one seed")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default: 0 quick, 0,1,2 full)")
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    parser.add_argument("--out-dir", default=None, help="folder of the runs (resumable; default: a temporary one)")
    parser.add_argument("--json", default=None, help="write the JSON report here")
    parser.add_argument("--md", default=None, help="write a results section into this markdown file (and the plot "
                                                   "into docs/figures/)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows, targets = run_tas(args)
    print_table("TAS on ResNet-20 at half the MACs", SUMMARY_COLUMNS, summary_rows(rows))
    print_targets(targets)
    payload = report("_widths_tas", sys.argv[1:] if argv is None else argv, start, rows, targets,
                     tas=args.tas_extra)
    if args.json:
        write_json(args.json, payload)
    if args.md:
        md = Path(args.md)
        fig = plot(args.tas_extra, Path(__file__).resolve().parent.parent / "docs" / "figures" / "tas_widths.png")
        rel = Path("figures") / fig.name if md.parent.name == "docs" else fig
        update_doc_section(md, "widths-tas", "TAS on ResNet-20 at half the MACs",
                           markdown(rows, targets, args.tas_extra, str(rel), payload["command"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
