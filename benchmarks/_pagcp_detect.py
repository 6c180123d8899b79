"""The detector part of benchmarks/pagcp.py: PAGCP with the YOLOv8 loss components (box, cls, dfl) as tasks.

A YOLOv8-n-layout detector (width reduced on CPU) is trained from scratch on ``cifar_mosaic`` as the detection
benchmark does (`pipeline_detect.fit`, cached), then pruned to at most half its MACs by PAGCP in rounds (box + cls +
dfl oracle, `prunekit.allocate.pagcp_detect.DetectionTasks`), and, at the MACs PAGCP reached, by uniform L1, global
L1 and single-task PAGCP (cls only). Every arm gets the same fine-tuning epochs; mAP50 / mAP50-95 on held-out
canvases right after pruning and after fine-tuning, held-out loss components, MACs, params, latency.
"""
from __future__ import annotations

import copy
import time
from typing import Any, Callable, Dict, List

import torch

from _common import median_latency_ms, target  # noqa: E402

DETECT_SETTINGS = {
    "quick": dict(width=0.125, img=128, n_train=512, epochs=8, batch=16, lr=0.1, ft_lr=0.05, ft_epochs=2,
                  n_ft=256, n_held=16, held_batch=16, n_test=128, ratio_steps=4, tolerance=0.2, allowance=20.0,
                  max_rounds=2),
    "full": dict(width=0.25, img=128, n_train=4000, epochs=40, batch=16, lr=0.1, ft_lr=0.05, ft_epochs=6,
                 n_ft=2000, n_held=128, held_batch=32, n_test=500, ratio_steps=10, tolerance=0.2, allowance=20.0,
                 max_rounds=3),
}
COMPONENTS = ("box", "cls", "dfl")


def _base_detector(d: Dict[str, Any], train_set, retrain: bool):
    """The trained detector (cached as safetensors under the cache root)."""
    from pipeline_detect import fit

    from prunekit.io import load_state_dict_strict, load_tensors, save_tensors
    from prunekit.models import build
    from prunekit.paths import cache_root

    model = build("yolov8n", pretrained=False, nc=10, width=d["width"])
    path = cache_root() / "pagcp" / f"yolov8n_w{d['width']}_mosaic{d['n_train']}x{d['epochs']}.safetensors"
    if path.exists() and not retrain:
        load_state_dict_strict(model, dict(load_tensors(path)), source=f"checkpoint {path}")
        return model.eval()
    fit(model, train_set, d["epochs"], d["lr"], d["batch"])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors(path, {k: v.contiguous() for k, v in model.state_dict().items()})
    return model.eval()


def _held_losses(model, tasks, held) -> Dict[str, float]:
    from prunekit.allocate.pagcp_sweep import TaskOracle

    return TaskOracle(tasks.tasks(), held, tasks.forward).losses(model.eval())


def _latency_ms(model, img: int, repeats: int = 10) -> float:
    return median_latency_ms(model, torch.zeros(1, 3, img, img), repeats, warmup=1)


def detector_part(mode: str, prune_pagcp: Callable, prune_baseline: Callable, retrain: bool = False
                  ) -> Dict[str, Any]:
    """Runs every arm on the detector; returns {"settings", "rows", "targets", "pagcp_logs"}.

    Args:
        mode: ``"quick"`` or ``"full"``.
        prune_pagcp: benchmarks.pagcp.prune_pagcp (model, tasks, held, example, settings, keep, forward).
        prune_baseline: benchmarks.pagcp.prune_baseline (model, allocator, example, keep).
    """
    from pipeline_detect import fit

    from prunekit.allocate.pagcp_detect import DetectionTasks
    from prunekit.data.cifar_mosaic import cifar_mosaic
    from prunekit.data.detection import collate_fn
    from prunekit.metrics.macs import count_macs
    from prunekit.train.detection import evaluate_map

    d = DETECT_SETTINGS[mode]
    train_set = cifar_mosaic("train", n_images=d["n_train"], img_size=d["img"])
    ft_set = torch.utils.data.Subset(train_set, range(d["n_ft"]))
    val = cifar_mosaic("val", n_images=d["n_test"] + d["n_held"], img_size=d["img"])
    # the oracle's held-out canvases follow the mAP ones (disjoint)
    held = [collate_fn([val[i] for i in range(s, min(s + d["held_batch"], len(val)))])
            for s in range(d["n_test"], len(val), d["held_batch"])]
    model = _base_detector(d, train_set, retrain)
    example = held[0][0][:2]
    base_macs = count_macs(model, example[:1])
    every = DetectionTasks(model, COMPONENTS)
    s = {k: d[k] for k in ("tolerance", "allowance", "ratio_steps")}

    def evaluate(m) -> Dict[str, float]:
        r = evaluate_map(m.eval(), val, limit=d["n_test"])
        return {"map50": 100 * r["map50"], "map50_95": 100 * r["map50_95"]}

    def rounds(components, keep_final: float, epochs_total: int):
        tasks = DetectionTasks(model, components)
        current, log, used, history = model, {}, 0, []
        for r in range(d["max_rounds"]):
            if r and used < epochs_total // 2:  # at most half the fine-tuning goes between rounds
                current = copy.deepcopy(current)
                fit(current, ft_set, 1, d["ft_lr"], d["batch"])
                used += 1
            keep = keep_final * base_macs / count_macs(current, example[:1])
            before = _held_losses(current, every, held)
            pruned, log = prune_pagcp(current, tasks.tasks(), held, example, s, min(keep, 0.99),
                                      forward=tasks.forward)
            after = _held_losses(pruned, every, held)
            history.append({"round": r + 1, "macs_kept": count_macs(pruned, example[:1]) / base_macs,
                            "seconds": log["seconds"], "loss_ratio": {t: after[t] / before[t] for t in after}})
            print(f"pagcp detector ({'+'.join(components)}) round {r + 1}: {history[-1]}")
            current = pruned
            if history[-1]["macs_kept"] <= keep_final * 1.02:
                break
        return current, {**log, "rounds": history}, epochs_total - used

    base_map = evaluate(model)
    rows: List[Dict[str, Any]] = [{"method": "unpruned", **{f"{k}_pruned": v for k, v in base_map.items()},
                                   "map50_ft": None, "map50_95_ft": None, "macs": base_macs,
                                   "params": sum(p.numel() for p in model.parameters()),
                                   "latency_ms": _latency_ms(model, d["img"]),
                                   "held_out_loss": _held_losses(model, every, held)}]
    keep: Dict[str, float] = {}
    arms = {
        "PAGCP (box + cls + dfl)": lambda: rounds(COMPONENTS, 0.5, d["ft_epochs"]),
        "uniform L1": lambda: prune_baseline(model, "uniform", example, keep["macs"]) + (d["ft_epochs"],),
        "global L1": lambda: prune_baseline(model, "global", example, keep["macs"]) + (d["ft_epochs"],),
        "PAGCP single-task (cls)": lambda: rounds(("cls",), keep["macs"], d["ft_epochs"]),
    }
    logs = {}
    for name, make in arms.items():
        t0 = time.perf_counter()
        pruned, log, epochs_left = make()
        prune_s = time.perf_counter() - t0
        after = evaluate(pruned)
        losses = _held_losses(pruned, every, held)
        tuned = copy.deepcopy(pruned)
        if epochs_left:
            fit(tuned, ft_set, epochs_left, d["ft_lr"], d["batch"])
        tuned_map = evaluate(tuned)
        rows.append({"method": name, "map50_pruned": after["map50"], "map50_95_pruned": after["map50_95"],
                     "map50_ft": tuned_map["map50"], "map50_95_ft": tuned_map["map50_95"],
                     "macs": count_macs(pruned.eval(), example[:1]),
                     "params": sum(p.numel() for p in pruned.parameters()),
                     "latency_ms": _latency_ms(pruned, d["img"]), "held_out_loss": losses, "prune_seconds": prune_s})
        if log:
            logs[name] = {**log, "allowance": d["allowance"]}
        keep.setdefault("macs", rows[-1]["macs"] / base_macs + 1e-3)
        print(f"detector {name}: pruned {after}, fine-tuned {tuned_map} ({prune_s:.1f}s to prune)")
    by = {r["method"]: r for r in rows}
    multi, single = by["PAGCP (box + cls + dfl)"], by["PAGCP single-task (cls)"]
    base_loss = rows[0]["held_out_loss"]

    def localisation_increase(row) -> float:  # the tasks the single-task oracle does not watch: box and dfl
        return sum(row["held_out_loss"][t] / base_loss[t] for t in ("box", "dfl")) / 2

    last_round = logs["PAGCP (box + cls + dfl)"]["rounds"][-1]
    targets = [
        target("detector: PAGCP mAP50-95 after FT minus uniform L1's (points)",
               multi["map50_95_ft"] - by["uniform L1"]["map50_95_ft"], ">=", 0.0),
        target("detector: PAGCP mAP50-95 after FT minus global L1's (points)",
               multi["map50_95_ft"] - by["global L1"]["map50_95_ft"], ">=", 0.0),
        target("detector: PAGCP held-out loss / (allowance x loss before the round), worst component, last round",
               max(last_round["loss_ratio"].values()) / d["allowance"], "<=", 1.0),
        target("detector: box+dfl loss ratio of single-task (cls) oracle minus multitask PAGCP's, before FT",
               localisation_increase(single) - localisation_increase(multi), ">=", 0.0),
        target("detector: MACs kept by PAGCP (fraction)", multi["macs"] / base_macs, "<=", 0.5 * 1.02),
    ]
    return {"settings": d, "base_macs": base_macs, "rows": rows, "targets": targets, "pagcp_logs": logs}
