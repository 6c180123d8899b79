"""The three-stage compression pipeline on CIFAR-10 (JPEG) from the pretrained option-B ResNet-56, 2x fewer MACs.

Arms, every one at the same MACs budget (keep 50%, the engine's search hits it within 2%; Torch-Pruning's ratio is
bisected to the same target) and the same total training epochs:

    a_l1        L1-norm filter pruning (uniform per layer), then fine-tuning for all the epochs
    b_tp_gnorm  Torch-Pruning GroupNormPruner: group-norm sparse training (regularize() after every backward,
                update_regularizer() at the start), global pruning, then fine-tuning
    c_gcp       `prunekit run gcp`: dynamic sparse training, group channel pruning, spatial attention distillation
    d_slim_cwd  `prunekit run slim-cwd`: linear-decay sparse training, global |gamma| pruning, channel-wise distillation
    ablations on c: constant sparse rate; one global threshold; CWD / logit-only / no distillation in stage 3;
                attention plus logit KD (paper 1's AT_str=3 variant, T = 3)
    d_global    slim-cwd with the author repo's global |gamma| threshold instead of the paper's uniform ratio

    python benchmarks/pipeline_cifar.py --quick --json out.json [--md docs/results_cifar.md]
    python benchmarks/pipeline_cifar.py --medium --json out.json   # every image, 1+1 epochs (about 1 h on 2 cores)
    python benchmarks/pipeline_cifar.py --json out.json            # full mode (the papers' scale: use a GPU)
    python benchmarks/pipeline_cifar.py --medium --train-subset 10000 --test-limit 5000 \
        --arms b_tp_gnorm,c_gcp,d_slim_cwd --sparsity-scales 1 10 50 --seeds 0 1 2 --json out.json  # ablation sweep

--sparsity-scale K multiplies every arm's sparsity strength alike (gcp's and slim-cwd's BN-L1 rate, Torch-Pruning's
reg): a short schedule gives the penalty far fewer steps than the papers' runs. A sweep (--sparsity-scales and/or
--seeds) runs each (scale, seed) pair in its own sub-folder and reports one table with the spread over seeds.

Rerunning the same command resumes: finished arms and stages are read back from --out-dir.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _cifar_report import (ablation_deltas, markdown, pipeline_targets, seed_spread, several_seeds,  # noqa: E402
                           stage_view, sweep_markdown)
from _common import print_table, print_targets, report, update_doc_section, write_json  # noqa: E402

MODES = {
    "quick": {"train_subset": 2500, "test_limit": 2000, "stage1_epochs": 1, "stage3_epochs": 1},
    "medium": {"train_subset": None, "test_limit": None, "stage1_epochs": 1, "stage3_epochs": 1},
    "full": {"train_subset": None, "test_limit": None, "stage1_epochs": 40, "stage3_epochs": 40},
}
COMMON = {"keep_macs": 0.5, "lr": 0.01, "batch_size": 128, "max_ratio": 0.9, "tp_reg": 5e-4, "seed": 0,
          "bn_recalibrate": 2048}
LABELS = {
    "a_l1": "(a) L1 uniform + fine-tune",
    "b_tp_gnorm": "(b) Torch-Pruning GroupNormPruner (sparse) + fine-tune",
    "c_gcp": "(c) gcp: variable BN-L1, group thresholds, attention KD",
    "d_slim_cwd": "(d) slim-cwd: decaying BN-L1, uniform per-layer BN-scale, CWD",
    "c_const_rate": "ablation c: constant sparse rate",
    "c_global_threshold": "ablation c: one global threshold",
    "c_distill_cwd": "ablation c: channel-wise distillation",
    "c_distill_logit": "ablation c: logit-only distillation",
    "c_distill_none": "ablation c: no distillation",
    "c_distill_at_logit": "ablation c: attention plus logit KD",
    "d_global_threshold": "variant d: one global threshold (author repo)",
}


def task_section(s: Dict[str, Any]) -> Dict[str, Any]:
    return {"model": "cifar_resnet56_b", "dataset": "cifar10", "train_subset": s["train_subset"],
            "test_limit": s["test_limit"], "batch_size": s["batch_size"], "eval_original": False}


def recipe_config(name: str, s: Dict[str, Any], out: Path) -> Dict[str, Any]:
    """The recipe config of a gcp / slim-cwd arm (ablations differ from c_gcp in one key)."""
    recipe = "slim-cwd" if name.startswith("d_") else "gcp"
    cfg = {"out_dir": str(out / name), "seed": s["seed"], "task": task_section(s),
           "stage1": {"epochs": s["stage1_epochs"], "lr": s["lr"], **sparse_rate(recipe, s)},
           "stage2": {"keep_macs": s["keep_macs"], "max_ratio": s["max_ratio"]},
           "stage3": {"epochs": s["stage3_epochs"], "lr": s["lr"], "bn_recalibrate": s["bn_recalibrate"],
                      "distill": {}}}
    if name == "c_const_rate":
        cfg["stage1"]["schedule"] = "constant"
    elif name == "c_global_threshold":
        cfg["stage2"]["threshold"] = "global"
    elif name == "d_global_threshold":
        cfg["stage2"]["allocator"] = "global"
    elif name == "c_distill_cwd":
        cfg["stage3"]["distill"].update(feature_loss="cwd", weight=1.0)
    elif name == "c_distill_logit":
        cfg["stage3"]["distill"].update(feature_loss="none", logit_weight=1.0)
    elif name == "c_distill_none":
        cfg["stage3"]["distill"].update(feature_loss="none", logit_weight=0.0)
    elif name == "c_distill_at_logit":
        cfg["stage3"]["distill"].update(logit_weight=1.0, temperature=3.0)
    return {"recipe": recipe, "config": cfg}


def sparse_rate(recipe: str, s: Dict[str, Any]) -> Dict[str, float]:
    """Stage 1's BN-L1 rate: the recipe's default times ``sparsity_scale`` (nothing when the scale is 1)."""
    scale = s.get("sparsity_scale", 1.0)
    if scale == 1.0:
        return {}
    from prunekit.methods.slim_cwd import SlimSparseConfig
    from prunekit.methods.stages import SparseStageConfig

    return {"s": (SlimSparseConfig if recipe == "slim-cwd" else SparseStageConfig).s * scale}


# Ablation arms start from c_gcp's finished stages that their settings share (same fingerprint, so they are reused).
SHARED = {"c_global_threshold": ["1_sparse"], "d_global_threshold": ["1_sparse"],
          "c_distill_cwd": ["1_sparse", "2_prune"],
          "c_distill_logit": ["1_sparse", "2_prune"], "c_distill_none": ["1_sparse", "2_prune"],
          "c_distill_at_logit": ["1_sparse", "2_prune"]}


def run_recipe_arm(name: str, s: Dict[str, Any], out: Path) -> Dict[str, Any]:
    from prunekit.methods import RECIPES

    spec = recipe_config(name, s, out)
    for stage in SHARED.get(name, []):
        src, dst = out / ("d_slim_cwd" if name.startswith("d_") else "c_gcp") / stage, out / name / stage
        if (src / "done.json").exists() and not dst.exists():
            shutil.copytree(src, dst)
    from prunekit.errors import StageSettingsChanged

    try:
        result = RECIPES.get(spec["recipe"])(spec["config"]).run()
    except StageSettingsChanged as err:  # the recipe's own advice (overwrite=true) is not an option of this script
        raise StageSettingsChanged(f"arm {name}: {err}. From this script: pass --fresh, or another --out-dir") from err
    last = result["stages"]["finetune"]
    return {"accuracy": result["accuracy"], "params": result["params"], "macs": result["macs"],
            "accuracy_stale_bn": last.get("accuracy_before_bn_recalibration", result["accuracy"]),
            "latency_ms": result["latency_ms"], "stages": result["stages"],
            "command": f"prunekit run {spec['recipe']} with {json.dumps(spec['config'])}"}


def finish(task, model, info: Dict[str, Any], s: Dict[str, Any]) -> Dict[str, Any]:
    """Measure a baseline arm's final model, after the same BatchNorm re-estimation the recipes' stage 3 ends with
    (so every arm is compared with fresh statistics; the stale-statistics accuracy is kept beside it)."""
    from prunekit.train.bn_recalibrate import recalibrate_batchnorm

    stale = task.accuracy(model)
    if s["bn_recalibrate"]:
        recalibrate_batchnorm(model, task.calibration_images(s["bn_recalibrate"]), task.cfg.eval_batch_size)
    return {"accuracy": task.accuracy(model), "accuracy_stale_bn": stale, **task.cost(model),
            "latency_ms": task.latency_ms(model), **info}


def run_l1_arm(s: Dict[str, Any], out: Path) -> Dict[str, Any]:
    """(a): L1-norm filters, the same ratio in every group (MACs-searched), then fine-tuning for every epoch."""
    import prunekit
    from prunekit.methods.base import plan_to_budget
    from prunekit.methods.stages import TrainStageConfig
    from prunekit.methods.task import ClassificationTask, TaskConfig

    task = ClassificationTask(TaskConfig(**task_section(s)), s["seed"])
    model, x = task.build(), task.example_inputs()
    plan = plan_to_budget(model, x, prunekit.analyze(model, x), "l1", "uniform",
                          prunekit.Budget(target="macs", keep_fraction=s["keep_macs"]),
                          allocator_options={"max_ratio": s["max_ratio"]})
    pruned = prunekit.apply(model, plan, x)
    pruned_acc = task.accuracy(pruned)
    epochs = s["stage1_epochs"] + s["stage3_epochs"]
    run = task.train(pruned, TrainStageConfig(epochs=epochs, lr=s["lr"]), out / "a_l1")
    return finish(task, pruned, {"pruned_accuracy": pruned_acc, "steps": run.steps}, s)


class TPRegularizer:
    """Training hook calling Torch-Pruning's ``pruner.regularize(model)`` after every backward."""

    def __init__(self, pruner):
        self.pruner = pruner

    def on_train_start(self, model, info) -> None:
        self.pruner.update_regularizer()

    def after_backward(self, model, step, epoch) -> None:
        self.pruner.regularize(model)


def tp_pruner(model, x, ratio: float, s: Dict[str, Any]):
    import torch_pruning as tp

    return tp.pruner.GroupNormPruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                     reg=s["tp_reg"] * s.get("sparsity_scale", 1.0), global_pruning=True,
                                     pruning_ratio=ratio, max_pruning_ratio=s["max_ratio"], ignored_layers=[model.fc])


def tp_prune_to_macs(model, x, s: Dict[str, Any], base_macs: int, task):
    """Bisect GroupNormPruner's global ratio until the pruned copy keeps `keep_macs` of the MACs (within 0.5%)."""
    goal = s["keep_macs"] * base_macs
    lo, hi, best = 0.0, 0.95, None
    for _ in range(16):
        mid = 0.5 * (lo + hi)
        trial = copy.deepcopy(model)
        tp_pruner(trial, x, mid, s).step()
        macs = task.cost(trial)["macs"]
        if best is None or abs(macs - goal) < abs(best[1] - goal):
            best = (trial, macs, mid)
        if abs(macs - goal) <= 0.005 * goal:
            break
        lo, hi = (mid, hi) if macs > goal else (lo, mid)
    return best


def run_tp_arm(s: Dict[str, Any], out: Path) -> Dict[str, Any]:
    """(b): group-norm sparse training (Torch-Pruning's regularizer), global group-norm pruning, fine-tuning."""
    from prunekit.methods.stages import TrainStageConfig
    from prunekit.methods.task import ClassificationTask, TaskConfig

    task = ClassificationTask(TaskConfig(**task_section(s)), s["seed"])
    model, x = task.build(), task.example_inputs()
    base_macs = task.cost(model)["macs"]
    hook = TPRegularizer(tp_pruner(model, x, 0.5, s))
    task.train(model, TrainStageConfig(epochs=s["stage1_epochs"], lr=s["lr"]), out / "b_tp_gnorm" / "sparse",
               hooks=[hook])
    sparse_acc = task.accuracy(model)
    pruned, macs, ratio = tp_prune_to_macs(model.eval(), x, s, base_macs, task)
    pruned_acc = task.accuracy(pruned)
    task.train(pruned, TrainStageConfig(epochs=s["stage3_epochs"], lr=s["lr"]), out / "b_tp_gnorm" / "finetune")
    return finish(task, pruned, {"sparse_accuracy": sparse_acc, "pruned_accuracy": pruned_acc, "tp_ratio": ratio}, s)


def run_arm(name: str, s: Dict[str, Any], out: Path) -> Dict[str, Any]:
    """Run (or read back) one arm; its figures are cached in ``<out>/<arm>/arm.json`` keyed by the settings."""
    cache = out / name / "arm.json"
    if cache.exists():
        data = json.loads(cache.read_text())
        if data.get("settings") == s:
            return {**data["row"], "label": LABELS[name]}
    t0 = time.perf_counter()
    if name == "a_l1":
        row = run_l1_arm(s, out)
    elif name == "b_tp_gnorm":
        row = run_tp_arm(s, out)
    else:
        row = run_recipe_arm(name, s, out)
    row = {"arm": name, "label": LABELS[name], "epochs_total": s["stage1_epochs"] + s["stage3_epochs"], **row,
           "seconds": round(time.perf_counter() - t0, 1)}
    write_json(cache, {"settings": s, "row": row})
    print(f"  {name}: accuracy {row['accuracy']:.4f}  MACs {row['macs']:,}  ({row['seconds']} s)", file=sys.stderr,
          flush=True)
    return row


def settings_from_args(args, parser) -> Dict[str, Any]:
    if args.quick and args.medium:
        parser.error("--quick and --medium exclude each other")
    mode = "quick" if args.quick else "medium" if args.medium else "full"
    s = {**COMMON, **MODES[mode], "mode": mode}
    if args.epochs:
        s.update(stage1_epochs=args.epochs[0], stage3_epochs=args.epochs[1])
    if args.train_subset:
        s["train_subset"] = args.train_subset
    if args.test_limit:
        s["test_limit"] = args.test_limit
    if args.bn_recalibrate is not None:
        s["bn_recalibrate"] = args.bn_recalibrate
    if args.sparsity_scale is not None and args.sparsity_scales:
        parser.error("--sparsity-scale and --sparsity-scales exclude each other")
    for k in [args.sparsity_scale or 1.0, *(args.sparsity_scales or [])]:
        if k <= 0:
            parser.error(f"sparsity scales must be > 0, got {k}")
    # each value has its own run folder, named by the value as printed
    for option, values in (("--sparsity-scales", [f"{k:g}" for k in args.sparsity_scales or []]),
                           ("--seeds", [str(n) for n in args.seeds or []])):
        if len(set(values)) < len(values):
            parser.error(f"{option} lists the same value twice: {' '.join(values)}")
    return with_sparsity(s, args.sparsity_scale or 1.0)


def with_sparsity(s: Dict[str, Any], scale: float) -> Dict[str, Any]:
    """The settings at this sparsity scale; the key is absent at 1, so runs cached before the option still match."""
    s = {k: v for k, v in s.items() if k != "sparsity_scale"}
    return s if scale == 1.0 else {**s, "sparsity_scale": scale}


def section_name(s: Dict[str, Any]) -> Tuple[str, str]:
    """(doc-section key, title): a run that departs from its mode's settings gets its own section, so it never
    overwrites the mode's figures."""
    mode, base = s["mode"], MODES[s["mode"]]
    key, title = [mode], [mode]
    if (s["stage1_epochs"], s["stage3_epochs"]) != (base["stage1_epochs"], base["stage3_epochs"]):
        key.append(f"{s['stage1_epochs']}_{s['stage3_epochs']}")
        title.append(f"{s['stage1_epochs']}+{s['stage3_epochs']} epochs")
    if s["train_subset"] != base["train_subset"]:
        key.append(f"train{s['train_subset']}")
        title.append(f"{s['train_subset']} training images")
    if s["test_limit"] != base["test_limit"]:
        key.append(f"test{s['test_limit']}")
        title.append(f"{s['test_limit']} test images")
    if "sparsity_scale" in s:
        key.append(f"sparsity_x{s['sparsity_scale']:g}")
        title.append(f"sparsity x{s['sparsity_scale']:g}")
    if s["bn_recalibrate"] != COMMON["bn_recalibrate"]:
        key.append(f"bn{s['bn_recalibrate']}")
        title.append(f"BN re-estimated on {s['bn_recalibrate']} images" if s["bn_recalibrate"]
                     else "no BN re-estimation")
    return "_".join(key), ", ".join(title)


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="2.5k train images, 2k test images, 1+1 epochs (a smoke run, under 10 min on 2 cores)")
    parser.add_argument("--medium", action="store_true",
                        help="all 50k train and 10k test images, 1+1 epochs (about 10 minutes per arm on 2 cores)")
    parser.add_argument("--json", default=None, help="write the report here")
    parser.add_argument("--md", default=None, help="write the markdown table here (e.g. docs/results_cifar.md)")
    parser.add_argument("--out-dir", default=None, help="run folder (default runs/pipeline_cifar_<section>)")
    parser.add_argument("--fresh", action="store_true", help="delete the run folder first")
    parser.add_argument("--arms", default=",".join(LABELS), help="comma-separated arms to run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, nargs=2, default=None, metavar=("STAGE1", "STAGE3"),
                        help="override the epochs of the sparse and fine-tuning stages")
    parser.add_argument("--train-subset", type=int, default=None, help="override the training subset size")
    parser.add_argument("--test-limit", type=int, default=None, help="override the number of test images")
    parser.add_argument("--sparsity-scale", type=float, default=None,
                        help="multiply every arm's sparsity strength (gcp's and slim-cwd's BN-L1 rate, Torch-Pruning's "
                             "reg) by this factor: short schedules give the penalty far fewer steps than the papers'")
    parser.add_argument("--sparsity-scales", type=float, nargs="+", default=None, metavar="K",
                        help="ablation: run the arms at each of these sparsity scales (each in <out-dir>/sparsity_xK) "
                             "and report them in one table")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, metavar="N",
                        help="run the arms once per seed (with --sparsity-scales: per scale and seed) and report the "
                             "spread over seeds")
    parser.add_argument("--bn-recalibrate", type=int, default=None,
                        help="training images for the final BatchNorm re-estimation of every arm (0 = off)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    s = settings_from_args(args, parser)
    sweep = bool(args.sparsity_scales or args.seeds)
    if sweep:  # a single --sparsity-scale is then one value of the sweep, so both spellings name one experiment
        args.sparsity_scales = args.sparsity_scales or [s.get("sparsity_scale", 1.0)]
        args.seeds = args.seeds or [s["seed"]]
        s = with_sparsity(s, 1.0)
        scale, title = sweep_name(*section_name(s), args.sparsity_scales, args.seeds)
    else:
        scale, title = section_name(s)
    out = Path(args.out_dir or f"runs/pipeline_cifar_{scale}")
    if args.fresh and out.exists():
        shutil.rmtree(out)
    from prunekit.methods.task import ClassificationTask, TaskConfig

    task = ClassificationTask(TaskConfig(**task_section(s)), s["seed"])
    original = task.build()
    base = {"accuracy": task.accuracy(original), **task.cost(original), "latency_ms": task.latency_ms(original)}
    arms = [name for name in args.arms.split(",") if name]
    if sweep:
        return run_sweep(args, argv, start, s, arms, out, base, scale, title)
    rows = [run_arm(name, s, out) for name in arms]
    targets = pipeline_targets(rows, base, s)
    print_table(f"CIFAR-10 pipeline ({title})",
                ["arm", "accuracy", "stale BN", "params", "MACs", "kept", "latency ms", "epochs"],
                [["original", base["accuracy"], base["accuracy"], base["params"], base["macs"], 1.0,
                  base["latency_ms"], 0]]
                + [[r["label"], r["accuracy"], r["accuracy_stale_bn"], r["params"], r["macs"],
                    r["macs"] / base["macs"], r["latency_ms"], r["epochs_total"]] for r in rows])
    print_targets(targets)
    for text, value in ablation_deltas(rows):
        print(f"  {text}: {value:+.2f} points")
    payload = report("pipeline_cifar", argv, start, rows, targets, settings=s, original=base,
                     load_average=os.getloadavg(), threads=args.threads,
                     arm_seconds_total=round(sum(r["seconds"] for r in rows), 1))
    write_outputs(args, payload, scale, title, markdown(rows, base, targets, s, payload["command"]))
    return 0


def write_outputs(args, payload: Dict[str, Any], scale: str, title: str, body: str) -> None:
    if args.json:
        write_json(args.json, payload)
    if args.md:
        if not Path(args.md).exists():
            from prunekit.io import atomic_write_text

            atomic_write_text(args.md, "# CIFAR-10 compression pipeline (papers 1 and 3)\n\nGenerated by "
                              "`benchmarks/pipeline_cifar.py`; each mode writes its own section.\n")
        update_doc_section(args.md, f"pipeline_cifar_{scale}", f"Compression pipeline on CIFAR-10 ({title})", body)


# ------------------------------------------------------------------------------------------ sparsity-scale ablation


def sweep_name(key: str, title: str, scales: List[float], seeds: List[int]) -> Tuple[str, str]:
    """Section key and title of a sweep, named by the dimensions that take more than one value (a single value is
    a fixed setting, named as such)."""
    dims = [("sparsity", "sparsity scales", [f"x{k:g}" for k in scales], len(scales) == 1 and scales[0] == 1),
            ("seed", "seeds", [str(n) for n in seeds], len(seeds) == 1 and seeds[0] == COMMON["seed"])]
    # the values are in the key, so two different sweeps never share a doc section
    key += "_sweep" + "".join(f"_{tag}{'-'.join(v)}" for tag, _, v, default in dims if not default)
    fixed = [f"{tag} {v[0]}" for tag, _, v, default in dims if len(v) == 1 and not default]
    swept = [f"{words} {', '.join(v)}" for _, words, v, _ in dims if len(v) > 1]
    title += "".join(", " + f for f in fixed) + (", sweep over " + " and ".join(swept) if swept else "")
    return key, title


def run_sweep(args, argv, start, s, arms, out: Path, base, scale: str, title: str) -> int:
    """Run the arms at every (sparsity scale, seed) pair, each pair in its own folder of `out`; one table, and per
    scale the mean and spread over seeds of each arm and of best(c,d) - b."""
    rows, targets = [], []
    for k in args.sparsity_scales:
        for seed in args.seeds:
            sk = {**with_sparsity(s, k), "seed": seed}
            folder = out / (f"sparsity_x{k:g}" + (f"_seed{seed}" if seed != COMMON["seed"] else ""))
            rows_k = [{**run_arm(name, sk, folder), "sparsity_scale": k, "seed": seed} for name in arms]
            rows += rows_k
            targets += pipeline_targets(rows_k, base, sk, f", sparsity x{k:g}, seed {seed}")
    cells = [[r["sparsity_scale"], r["seed"], r["label"], *stage_view(r), r["accuracy"], r["macs"] / base["macs"]]
             for r in rows]
    print_table(f"CIFAR-10 pipeline ({title})", ["scale", "seed", "arm", "after sparse", "BN |gamma|<1e-2",
                                                 "after prune", "accuracy", "kept"], cells)
    print_targets(targets)
    spread = seed_spread(rows)
    if several_seeds(spread):
        print_table("accuracy over seeds, points", ["scale", "arm or difference", "seeds", "mean", "std"], spread)
    s = {k: v for k, v in s.items() if k != "seed"}  # each row carries its own seed
    payload = report("pipeline_cifar", argv, start, rows, targets, settings=s, original=base,
                     sparsity_scales=args.sparsity_scales, seeds=args.seeds, seed_spread=spread,
                     load_average=os.getloadavg(), threads=args.threads,
                     arm_seconds_total=round(sum(r["seconds"] for r in rows), 1))
    write_outputs(args, payload, scale, title, sweep_markdown(cells, spread, base, targets, s, payload["command"]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
