"""Input-dependent pruning: FTWT dynamic channel masks (paper 9) and MACPruning input-pixel masks (paper 6).

    python benchmarks/dynamic.py --json out.json                 # full run
    python benchmarks/dynamic.py --quick --json out.json         # under 10 minutes on one CPU thread
    python benchmarks/dynamic.py --quick --json out.json --md    # also rewrites docs/results_dynamic.md

FTWT (on the pretrained CIFAR ResNets; no pretrained VGG-16 exists in the data folder): for heat-map-mass thresholds
1.0 / 0.95 / 0.9 / 0.8, predictors are attached to the engine's single-producer channel groups and, as gates, to
the stem and each block's last conv (before the residual add), fitted on cached features, and trained with the
backbone; reported: accuracy, mean and spread of per-input MACs, predictor agreement with its
labels, and batch-1 latency of the gathered path against the dense model. The static baseline prunes the same model
with the engine (allocator ``global``, criterion ``l1``) to the dynamic model's mean MACs and fine-tunes it for the
same number of backbone steps.

MACPruning (digits CNN trained here, pretrained CIFAR ResNet-20): accuracy against keep probability p for random and
importance-aware maps (top-q 10 / 25 / 50 %, input-gradient saliency), and in the leakage simulator
(`prunekit.security`) the traces a CPA needs for rank-1 recovery of a first-layer weight, without the defence, with
it, and with the realigning counter-attack, over 5 seeds.
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
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import (THREADS_HELP, doc_command, fmt, markdown_table, markdown_target_table, print_table,  # noqa: E402
                     print_targets, report, target, write_json)

from prunekit.paths import data_root, repo_root  # noqa: E402

THRESHOLDS = (1.0, 0.95, 0.9, 0.8)
KEEP_PROBS = (0.9, 0.8, 0.6, 0.5)  # 0.9 beyond the list: the mildest random part
TOP_QS = (0.0, 0.1, 0.25, 0.5, 0.6, 0.9)  # 0.6 and 0.9 beyond the list: how little randomness is needed
SETTINGS = {
    "quick": dict(ftwt_models=("cifar_resnet56",), train_items=2560, steps=40, warmup=0, fit_images=512, test=250,
                  latency=30, latency_repeats=2,
                  oracle=True, digits_finetune=1, cifar_finetune_steps=150, cifar_test=1000, sim_traces=2000,
                  sim_attacks=4,
                  sim_maps=((0.0, 0.5), (0.5, 0.8), (0.5, 0.9), (0.6, 0.8), (0.9, 0.8))),
    "full": dict(ftwt_models=("cifar_resnet56", "cifar_resnet20"), train_items=10000, steps=150, warmup=0,
                 fit_images=1024, latency_repeats=3,
                 test=2000, latency=100, oracle=True, digits_finetune=5, cifar_finetune_steps=300, cifar_test=2000,
                 sim_traces=5000, sim_attacks=4,
                 sim_maps=tuple((q, p) for q in TOP_QS for p in KEEP_PROBS)),
}
DOC = "docs/results_dynamic.md"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------------------------------------- FTWT


def cifar_splits(name: str, train_items: int, test_items: int, seed: int = 0):
    from prunekit import data
    from prunekit.models import info

    meta = info(name)
    norm = (meta.mean, meta.std)
    train = data.load("cifar10", "train", augment="standard", normalize=norm)
    index = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:train_items].tolist()
    return torch.utils.data.Subset(train, index), data.load("cifar10", "test", normalize=norm, limit=test_items)


def static_baseline(model, keep: float, train_set, test_set, steps: int, batch: int) -> Dict[str, Any]:
    """The engine's global-L1 prune to `keep` of the MACs, fine-tuned for `steps` steps."""
    import prunekit
    from prunekit.metrics.accuracy import evaluate_accuracy
    from prunekit.metrics.macs import count_macs
    from prunekit.train.loop import TrainConfig, train

    x = torch.randn(1, 3, 32, 32)
    base = count_macs(model, x)
    plan = prunekit.plan(model, x, criterion="l1", allocator="global",
                         budget=prunekit.Budget(target="macs", keep_fraction=keep))
    pruned = prunekit.apply(model, plan, x)
    train(pruned, train_set, TrainConfig(epochs=1, lr=0.01, weight_decay=5e-4, batch_size=batch, max_steps=steps,
                                         device="cpu", progress=False, seed=0))
    pruned.eval()
    return {"accuracy": evaluate_accuracy(pruned, test_set, progress=False), "macs_frac": count_macs(pruned, x) / base,
            "model": pruned}


def run_ftwt(name: str, s: Dict[str, Any], thresholds=THRESHOLDS) -> List[Dict[str, Any]]:
    from prunekit.dynamic import DynamicConfig, attach
    from prunekit.dynamic.evaluate import batch1_latency, evaluate_dynamic
    from prunekit.dynamic.gathered import build_gathered, fold_batchnorm
    from prunekit.dynamic.train import DynamicTrainConfig, train_dynamic
    from prunekit.metrics.accuracy import evaluate_accuracy
    from prunekit.models import build

    train_set, test_set = cifar_splits(name, s["train_items"], s["test"])
    pretrained = build(name).eval()
    folded = fold_batchnorm(pretrained, torch.randn(1, 3, 32, 32))  # the fair dense baseline: BN folded as in gathered
    dense_acc = evaluate_accuracy(pretrained, test_set, progress=False)
    log(f"{name}: dense accuracy {dense_acc:.4f} on {len(test_set)} test images")
    images = [test_set[i][0] for i in range(s["latency"])]
    rows = []
    for r in thresholds:
        t0 = time.perf_counter()
        dyn = attach(copy.deepcopy(pretrained), torch.randn(1, 3, 32, 32), DynamicConfig(threshold=r, softmax=False))
        steps = min(s["steps"], len(train_set) // 64)
        info = train_dynamic(dyn, train_set, DynamicTrainConfig(epochs=1, warmup_steps=s["warmup"], max_steps=steps,
                                                         fit_images=s["fit_images"], batch_size=64), progress=False)
        t_train = time.perf_counter() - t0
        figures = evaluate_dynamic(dyn, test_set).summary()
        oracle = evaluate_dynamic(dyn, test_set, mask_source="labels").summary() if s["oracle"] else {}
        gathered = build_gathered(dyn, images[0][None])
        latency = batch1_latency({"dense": pretrained, "dense_folded": folded, "gathered": gathered}, images,
                                 repeats=s["latency_repeats"], clock="cpu")
        t_measure = time.perf_counter() - t0 - t_train
        keep = figures["macs_frac_mean"] + figures["predictor_macs_frac"]
        row = {"part": "ftwt", "model": name, "threshold": r, "dense_accuracy": dense_acc, **figures,
               "label_mask_accuracy": oracle.get("accuracy"), "label_macs_frac": oracle.get("macs_frac_mean"),
               "dense_ms": latency["dense"], "dense_folded_ms": latency["dense_folded"],
               "gathered_ms": latency["gathered"], "speedup": latency["dense_folded"] / latency["gathered"],
               "speedup_unfolded": latency["dense"] / latency["gathered"], "masked_sites": len(dyn.sites),
               "gated_sites": sum(site.tied for site in dyn.sites), "fit_agreement": info["fit_agreement"],
               "dense_groups": len(dyn.dense), "train_steps": steps, "warmup_steps": s["warmup"],
               "seconds_train": t_train, "seconds_measure": t_measure}
        if keep < 0.99:
            static = static_baseline(pretrained, keep, train_set, test_set, steps, 64)
            row.update(static_accuracy=static["accuracy"], static_macs_frac=static["macs_frac"],
                       static_ms=batch1_latency({"static": fold_batchnorm(static["model"], images[0][None])},
                                                images, clock="cpu")["static"])
        rows.append(row)
        log(f"{name} r={r}: acc {figures['accuracy']:.4f} (static {fmt(row.get('static_accuracy'))}), MACs "
            f"{figures['macs_frac_mean']:.3f} +- {figures['macs_frac_std']:.3f}, agreement {figures['agreement']:.3f}, "
            f"speedup {row['speedup']:.2f}x (train {t_train:.0f} s, measure {t_measure:.0f} s, total "
            f"{time.perf_counter() - t0:.0f} s)")
    return rows


def conv_scaling(repeats: int = 300) -> List[Dict[str, Any]]:
    """CPU time of a batch-1 3x3 convolution with half its filters or half its input channels, over the full one,
    at each CIFAR ResNet stage's width: how much of a masked layer's MAC saving the backend turns into time."""
    import torch.nn.functional as F

    from prunekit.dynamic.evaluate import CLOCKS

    now = CLOCKS["cpu"]
    rows = []
    with torch.inference_mode():
        for channels, size in ((16, 32), (32, 16), (64, 8)):
            x = torch.randn(1, channels, size, size)
            weight, half = torch.randn(channels, channels, 3, 3), channels // 2
            cases = {"full": (x, weight), "half_out": (x, weight[:half].contiguous()),
                     "half_in": (x[:, :half].contiguous(), weight[:, :half].contiguous())}
            times = {k: [] for k in cases}
            for _ in range(repeats):  # interleaved, median
                for name, (inp, w) in cases.items():
                    start = now()
                    F.conv2d(inp, w, None, 1, 1)
                    times[name].append(now() - start)
            med = {k: sorted(v)[len(v) // 2] * 1000 for k, v in times.items()}
            rows.append({"part": "convscale", "channels": channels, "size": size, "full_ms": med["full"],
                         "half_out_ratio": med["half_out"] / med["full"],
                         "half_in_ratio": med["half_in"] / med["full"]})
    return rows


def conv_scaling_section(rows: List[Dict[str, Any]]) -> List[str]:
    """The doc's table of how a batch-1 conv's time scales with its filters and input channels."""
    if not rows:
        return []
    return ["Why the measured speed-up stays under the ceiling: CPU time of one batch-1 3x3 convolution (torch's CPU "
            "path: unfold, then a matrix product) with half its filters or half its input channels, over the full "
            "one. A masked layer's filters cost output-side MACs; its readers' skipped input channels cost input-side "
            "ones; the unfold moves every input channel whatever the filters, so output-side savings buy less time "
            "than their MACs (and the gates, on the residual sum, have only those).", "",
            *markdown_table(("channels", "size", "full ms", "half filters / full", "half inputs / full"),
                            [[r["channels"], f"{r['size']}x{r['size']}", r["full_ms"], r["half_out_ratio"],
                              r["half_in_ratio"]] for r in rows]), ""]


def dense_groups_note(name: str) -> Dict[str, str]:
    from prunekit.dynamic import find_sites
    from prunekit.models import build

    return find_sites(build(name, pretrained=False).eval(), torch.randn(1, 3, 32, 32))[1]


# ---------------------------------------------------------------------------------------------------- MACPruning


def pixel_accuracy(model, test_set, importance, seeds: int) -> List[Dict[str, Any]]:
    from prunekit.dynamic.pixel_mask import MACPrunedModel, PixelActivationMap, PixelMaskConfig
    from prunekit.metrics.accuracy import evaluate_accuracy

    hw = tuple(test_set[0][0].shape[1:])
    rows = []
    for q in TOP_QS:
        for p in KEEP_PROBS:
            pam = PixelActivationMap(PixelMaskConfig(p, q), hw, importance)
            accs = [evaluate_accuracy(MACPrunedModel(model, pam, seed=k), test_set, progress=False)
                    for k in range(seeds)]
            rows.append({"top_q": q, "keep_prob": p, "accuracy": sum(accs) / len(accs),
                         "active_pixels": pam.active_fraction()})
    return rows


def run_macpruning(name: str, s: Dict[str, Any]) -> List[Dict[str, Any]]:
    from prunekit import data
    from prunekit.dynamic.pixel_mask import PixelActivationMap, PixelMaskConfig, finetune_with_pixel_masks, first_layer
    from prunekit.metrics.accuracy import evaluate_accuracy
    from prunekit.models import info
    from prunekit.security.setup import importance_for, load_classifier
    from prunekit.security.simulate import SimulationConfig, theoretical_ratio, traces_table  # noqa: F401
    from prunekit.train.loop import TrainConfig, train

    t0 = time.perf_counter()
    model, train_set, meta = load_classifier(name)
    importance = importance_for(model, train_set, "saliency", 512)  # on training images, not augmented
    if name != "digits_cnn":  # fine-tuning uses the standard augmentation
        train_set = data.load(meta.dataset, "train", augment="standard", normalize=(meta.mean, meta.std))
    if name == "digits_cnn":
        test_set = data.load("digits", "test")
    else:
        test_set = data.load(meta.dataset, "test", normalize=(meta.mean, meta.std), limit=s["cifar_test"])
    dense = evaluate_accuracy(model, test_set, progress=False)
    seeds = 3 if name == "digits_cnn" else 1
    rows = pixel_accuracy(model, test_set, importance, seeds)
    hw = tuple(meta.input_shape[1:])
    simulated = {(q, p) for q, p in s["sim_maps"]}
    finetune_cfg = dict(epochs=s["digits_finetune"] if name == "digits_cnn" else 1, lr=0.01, batch_size=64,
                        weight_decay=5e-4, device="cpu", progress=False, seed=0,
                        max_steps=None if name == "digits_cnn" else s["cifar_finetune_steps"])
    # the same fine-tuning without masks: the reference of the fine-tuned drops (fine-tuning alone changes accuracy)
    dense_tuned = copy.deepcopy(model)
    train(dense_tuned, train_set, TrainConfig(**finetune_cfg))
    dense_finetuned = evaluate_accuracy(dense_tuned.eval(), test_set, progress=False)
    for row in rows:
        row.update(part="macpruning", model=name, dense_accuracy=dense, drop_points=100 * (dense - row["accuracy"]))
        if row["top_q"] > 0 and (row["top_q"], row["keep_prob"]) in simulated:
            # fine-tuning with the masks as augmentation, for the simulated importance-aware maps
            tuned = copy.deepcopy(model)
            pam = PixelActivationMap(PixelMaskConfig(row["keep_prob"], row["top_q"]), hw, importance)
            finetune_with_pixel_masks(tuned, pam, train_set, TrainConfig(**finetune_cfg))
            from prunekit.dynamic.pixel_mask import MACPrunedModel

            tuned.eval()
            accs = [evaluate_accuracy(MACPrunedModel(tuned, pam, seed=k), test_set, progress=False)
                    for k in range(seeds)]
            row["finetuned_accuracy"] = sum(accs) / len(accs)
            row["dense_finetuned_accuracy"] = dense_finetuned
            row["finetuned_drop_points"] = 100 * (dense_finetuned - row["finetuned_accuracy"])
    log(f"{name}: dense accuracy {dense:.4f}; accuracy sweep done ({time.perf_counter() - t0:.0f} s)")
    conv = model.get_submodule(first_layer(model, torch.zeros(1, *meta.input_shape)))
    maps = {(q, p): PixelActivationMap(PixelMaskConfig(p, q), hw, importance) for q, p in s["sim_maps"]}
    h_out = hw[0] // conv.stride[0]
    cfg = SimulationConfig(sigma=1.0, max_traces=s["sim_traces"], attacks=s["sim_attacks"], seeds=(0, 1, 2, 3, 4),
                           rows=None if name == "digits_cnn" else (h_out // 2,))
    sim_rows, first = traces_table(conv, hw, {f"{q},{p}": m for (q, p), m in maps.items()}, cfg)
    by_key = {tuple(float(v) for v in r["map"].split(",")): r for r in sim_rows}
    for row in rows:
        sim = by_key.get((row["top_q"], row["keep_prob"]))
        if sim is not None:
            row.update({k: sim[k] for k in ("undefended", "defended", "realigned", "ratio", "ratio_is_lower_bound",
                                            "realigned_ratio", "theoretical_ratio", "failed", "target")})
    log(f"{name}: simulator done ({time.perf_counter() - t0:.0f} s)")
    first["model"], first["map"] = name, f"top-q {s['sim_maps'][0][0]:g}, p {s['sim_maps'][0][1]:g}"
    return rows, first


# ------------------------------------------------------------------------------------------------------ reporting


def ftwt_targets(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    out = []
    for name in sorted({r["model"] for r in rows}):
        mine = [r for r in rows if r["model"] == name]
        gaps = [r["accuracy"] - r["static_accuracy"] for r in mine if "static_accuracy" in r]
        out.append(target(f"ftwt {name}: dynamic minus static accuracy at equal mean MACs (worst threshold < 1)",
                          min(gaps) if gaps else None, ">=", 0.0))
        at09 = [r["speedup"] for r in mine if r["threshold"] == 0.9]
        out.append(target(f"ftwt {name}: gathered path speed-up over dense at batch 1, threshold 0.9",
                          at09[0] if at09 else None, ">=", 1.2))
    return out


def macpruning_targets(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    out = []
    for name in sorted({r["model"] for r in rows}):
        cheap = [r for r in rows if r["model"] == name and r["top_q"] > 0 and "ratio" in r
                 and min(r["drop_points"], r.get("finetuned_drop_points", r["drop_points"])) <= 2.0]
        best = max(cheap, key=lambda r: r["ratio"]) if cheap else None
        out.append(target(f"macpruning {name}: traces-needed ratio of the best importance-aware map costing <= 2 "
                          f"points ({'q=%g p=%g' % (best['top_q'], best['keep_prob']) if best else 'none'}; "
                          f"realigned attack: {fmt(best['realigned_ratio'], 3) if best else '-'}x)",
                          best["ratio"] if best else None, ">=", 10.0))
    return out


def print_tables(ftwt: List[Dict[str, Any]], mac: List[Dict[str, Any]]) -> None:
    if ftwt:
        print_table("FTWT: dynamic vs static at equal mean MACs", FTWT_COLUMNS, [ftwt_cells(r) for r in ftwt])
    if mac:
        print_table("MACPruning: accuracy and traces needed", MAC_COLUMNS, [mac_cells(r) for r in mac])


FTWT_COLUMNS = ("model", "r", "acc dynamic", "acc static", "acc dense", "acc label masks", "MACs mean",
                "MACs std", "MACs p5-p95", "agreement", "dense ms", "dense folded ms", "gathered ms", "speed-up",
                "ceiling", "static ms")


def ftwt_cells(r: Dict[str, Any]) -> List[Any]:
    return [r["model"], r["threshold"], r["accuracy"], r.get("static_accuracy"), r["dense_accuracy"],
            r["label_mask_accuracy"], r["macs_frac_mean"], r["macs_frac_std"],
            f"{r['macs_frac_p5']:.3f}-{r['macs_frac_p95']:.3f}", r["agreement"], r["dense_ms"],
            r.get("dense_folded_ms"), r["gathered_ms"], r["speedup"], 1 / r["macs_frac_mean"], r.get("static_ms")]


MAC_COLUMNS = ("model", "map", "p", "active px", "acc", "drop (pts)", "drop fine-tuned", "traces undef.",
               "traces defended", "ratio", "realigned", "theory R")


def mac_cells(r: Dict[str, Any]) -> List[Any]:
    defended = None
    if "defended" in r:
        defended = f"> {int(r['defended'] if r['defended'] != float('inf') else 0) or 'cap'}" \
            if r["ratio_is_lower_bound"] else r["defended"]
    ratio = (f"{'>= ' if r['ratio_is_lower_bound'] else ''}{r['ratio']:.1f}x") if "ratio" in r else None
    return [r["model"], "random" if r["top_q"] == 0 else f"top-q {r['top_q']:g}", r["keep_prob"], r["active_pixels"],
            r["accuracy"], r["drop_points"], r.get("finetuned_drop_points"), r.get("undefended"), defended, ratio,
            r.get("realigned"), r.get("theoretical_ratio")]


def generated_notes(ftwt: List[Dict[str, Any]], mac: List[Dict[str, Any]]) -> List[str]:
    """Observations computed from the rows (so the page never quotes a figure the table does not hold)."""
    notes = []
    for r in ftwt:
        if r["threshold"] == 0.9:
            notes.append(f"- {r['model']} at r = 0.9: the masks keep {r['macs_frac_mean']:.3f} of the backbone MACs, so "
                         f"a path whose time followed MACs would run {1 / r['macs_frac_mean']:.2f}x faster (the "
                         f"ceiling); the gathered path measured {r['speedup']:.2f}x against the BN-folded dense model "
                         f"({r.get('speedup_unfolded', float('nan')):.2f}x against the model as stored). "
                         f"{r.get('gated_sites', 0)} of its {r['masked_sites']} masked convs are gates (the stem and each "
                         "block's last conv, masked before the residual add: their skipped filters save their own MACs "
                         "only); at 16-64 channels and batch 1 the per-layer overhead (predictor, index gathers, "
                         "scatter into the residual sum) is what keeps the measured figure under the ceiling.")
    gaps = [(r["model"], r["threshold"], r["accuracy"] - r["static_accuracy"]) for r in ftwt if "static_accuracy" in r]
    if gaps:
        notes.append("- dynamic minus static accuracy (points): " + ", ".join(
            f"{m} r={t}: {100 * g:+.1f}" for m, t, g in gaps) + ".")
    for model in sorted({r["model"] for r in mac}):
        rows = [r for r in mac if r["model"] == model and "realigned_ratio" in r]
        if rows:
            notes.append(f"- {model}: the realigning attacker needs "
                         f"{min(r['realigned_ratio'] for r in rows):.2f}x to {max(r['realigned_ratio'] for r in rows):.2f}x "
                         f"the undefended traces over the simulated maps: knowing which MACs ran undoes the defence "
                         f"(the important pixels' MACs always run, so their weights stay exposed).")
        random = [r for r in mac if r["model"] == model and r["top_q"] == 0]
        if random:
            notes.append(f"- {model}: the random map at p = {random[0]['keep_prob']} costs "
                         f"{random[0]['drop_points']:.1f} points without fine-tuning; the importance-aware maps keep "
                         f"the pixels the model reads.")
    return notes


def write_doc(payload: Dict[str, Any], path: Path, plots: List[str]) -> None:
    from prunekit.io import atomic_write_text

    ftwt = [r for r in payload["rows"] if r["part"] == "ftwt"]
    mac = [r for r in payload["rows"] if r["part"] == "macpruning"]
    lines = ["# Input-dependent pruning: FTWT and MACPruning", "",
             f"Generated by `{doc_command(payload['command'])}` in {payload['seconds']:.0f} s "
             f"(torch {payload['environment'].get('torch', '?')}, one CPU thread; latency is the median over test "
             f"images run one at a time, dense and gathered interleaved, in the thread's CPU time: the machine is "
             f"shared, and wall time there inflates small ops at random). Mode: {payload['mode']}.", "",
             "## Targets", "", *markdown_target_table(payload["targets"], lambda v: fmt(v, 4)), "",
             "## FTWT (paper 9): dynamic channel masks", "",
             f"No pretrained CIFAR VGG-16 exists in the data folder ({payload['vgg16_note']}), so FTWT runs on the "
             "pretrained CIFAR ResNets. Masks sit on the groups a single conv produces (the first conv of each "
             "residual block: its filters and the next conv's input channels are skipped) and, as in FTWT's ResNets, "
             "gate the stem and each block's last conv before the residual add (their filters are skipped, the sum "
             "stays dense for its readers). The groups tied across residual adds cannot be masked as one unit:", ""]
    for name, dense in payload.get("dense_groups", {}).items():
        lines += [f"- {name}: {len(dense)} such groups, e.g. `{next(iter(dense))}`: {next(iter(dense.values()))}"]
    lines += ["", "*acc label masks*: accuracy with the ground-truth masks instead of the predicted ones. *MACs*: "
              "backbone MACs per input over the dense model's (predictor MACs are under 0.1% and added to the static "
              "baseline's budget). *agreement*: predicted mask equal to its label, over inputs and filters. The static "
              "baseline (engine, allocator global, criterion l1) gets the dynamic model's mean MACs and the same number "
              "of backbone training steps (the predictors' fit on cached features trains no backbone weight). "
              "*dense folded*: the dense model with its BatchNorms folded into the convs, as the gathered path "
              "folds them; *speed-up* is against it; *ceiling*: 1 / MACs mean, the speed-up of a path whose time "
              "followed MACs. *static ms*: the static model, BN folded too.", "", *markdown_table(FTWT_COLUMNS, [ftwt_cells(r) for r in ftwt]), "",
              *conv_scaling_section([r for r in payload["rows"] if r["part"] == "convscale"]),
              "## MACPruning (paper 6): input-pixel masks against a simulated CPA", "",
              "Maps: the issue's grid (keep probability 0.8 / 0.6 / 0.5, top-q 10 / 25 / 50 %) plus p = 0.9 and "
              "top-q 60 / 90 %, to show how little randomness the defence needs. The importance map is input-gradient "
              "saliency over 512 training images drawn at random (the stored training split is sorted by class). "
              "Accuracy: mean over 3 mask draws (digits) or one draw (ResNet-20) of the test images; *drop fine-tuned*: "
              "after fine-tuning with the same masks as augmentation, for the simulated importance-aware maps, against the "
              "model fine-tuned the same way without masks (fine-tuning on the JPEG training images alone changes the "
              "ResNet's accuracy) (digits: "
              f"{payload['settings']['digits_finetune']} epochs; ResNet-20: "
              f"{payload['settings']['cifar_finetune_steps']} steps of 64 images). Simulator: first layer in int8, one MAC "
              "per time step, leakage HW(int8(w*x)) + N(0, 1), skipped MACs take no time; CPA over 256 guesses with "
              "random known inputs; traces needed for rank 1 in at least 3 of 4 attacks from then on, median over 5 "
              "seeds; *>= Nx* means the defended attack never succeeded within the cap. *realigned*: traces needed by "
              "the attacker who knows which MACs ran. *theory R*: 1 / max_t P(target at t)^2.", "",
              *markdown_table(MAC_COLUMNS, [mac_cells(r) for r in mac]), ""]
    for plot in plots:
        lines += [f"![correlation against traces]({Path(plot).name})", ""]
    lines += ["## Notes", "", *generated_notes(ftwt, mac)]
    atomic_write_text(path, "\n".join(lines) + "\n")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None, help="write results to this JSON file")
    parser.add_argument("--quick", action="store_true", help="smoke run: ResNet-56 only, few steps, fewer traces")
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    parser.add_argument("--parts", default="ftwt,macpruning", help="comma-separated: ftwt, macpruning, convscale "
                                                                    "(the conv-time scaling table; runs with ftwt)")
    parser.add_argument("--thresholds", default=",".join(str(t) for t in THRESHOLDS),
                        help="comma-separated FTWT mass thresholds (one per process lets a shared machine run them "
                             "side by side; --from-json merges the runs)")
    parser.add_argument("--md", action="store_true", help=f"rewrite {DOC} (and its plots)")
    parser.add_argument("--from-json", default=None, help="with --md: render the page from earlier runs' JSON "
                                                          "(comma-separated, e.g. one per --parts run: merged, "
                                                          "targets recomputed) instead of running again")
    args = parser.parse_args(argv)
    if args.from_json:
        if not args.md:
            parser.error("--from-json only renders the page: add --md")
        payloads = [json.loads(Path(path).read_text()) for path in args.from_json.split(",") if path]
        write_outputs(merge_payloads(payloads))
        return 0
    argv_used = sys.argv[1:] if argv is None else list(argv)
    import warnings

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    mode = "quick" if args.quick else "full"
    s = SETTINGS[mode]
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    start = time.perf_counter()
    ftwt_rows, mac_rows, firsts = [], [], []
    vgg = sorted(p.name for p in (data_root() / "weights").glob("*vgg*")) if (data_root() / "weights").is_dir() else []
    scale_rows = conv_scaling() if parts & {"ftwt", "convscale"} else []
    if "ftwt" in parts:
        for name in s["ftwt_models"]:
            ftwt_rows += run_ftwt(name, s, tuple(float(t) for t in args.thresholds.split(",") if t))
    if "macpruning" in parts:
        for name in ("digits_cnn", "cifar_resnet20"):
            rows, first = run_macpruning(name, s)
            mac_rows += rows
            firsts.append(first)
    targets = (ftwt_targets(ftwt_rows) if ftwt_rows else []) + (macpruning_targets(mac_rows) if mac_rows else [])
    print_tables(ftwt_rows, mac_rows)
    print_targets(targets)
    payload = report("dynamic", argv_used, start, ftwt_rows + mac_rows + scale_rows, targets, mode=mode,
                     vgg16_note=f"VGG weights found: {vgg}" if vgg else "no file matching *vgg* under weights/",
                     dense_groups={n: dense_groups_note(n) for n in s["ftwt_models"]} if ftwt_rows else {},
                     settings={k: v for k, v in s.items()},
                     simulator_curves={f["model"]: {k: f[k] for k in ("checkpoints", "curves", "target", "map")}
                                       for f in firsts})
    if args.json:
        write_json(args.json, payload)
    if args.md:
        write_outputs(json.loads(json.dumps(payload, default=str)))
    return 0


def merge_payloads(payloads: List[Dict[str, Any]]) -> Dict[str, Any]:
    """One payload from runs of different parts (e.g. ``--parts ftwt`` and ``--parts macpruning`` run side by side):
    rows, curves and dense-group notes joined, the targets recomputed from the joined rows."""
    if len(payloads) == 1:
        return payloads[0]
    if len({p.get("mode") for p in payloads}) != 1:
        raise SystemExit("dynamic: --from-json runs must share one mode (quick or full)")
    merged = dict(payloads[0])
    merged["command"] = " and ".join(p["command"] for p in payloads)
    merged["seconds"] = sum(float(p["seconds"]) for p in payloads)
    scale = next(([r for r in p["rows"] if r["part"] == "convscale"] for p in payloads
                  if any(r["part"] == "convscale" for r in p["rows"])), [])  # one conv-time table, the first run's
    merged["rows"] = [r for p in payloads for r in p["rows"] if r["part"] != "convscale"] + scale
    for key in ("dense_groups", "simulator_curves"):
        merged[key] = {k: v for p in payloads for k, v in p.get(key, {}).items()}
    ftwt = [r for r in merged["rows"] if r["part"] == "ftwt"]
    mac = [r for r in merged["rows"] if r["part"] == "macpruning"]
    merged["targets"] = (ftwt_targets(ftwt) if ftwt else []) + (macpruning_targets(mac) if mac else [])
    merged["all_passed"] = bool(merged["targets"]) and all(t["passed"] for t in merged["targets"])
    return merged


def write_outputs(payload: Dict[str, Any]) -> None:
    """The results page and its correlation plots (one per MACPruning model)."""
    from prunekit.security.simulate import plot_curves

    doc = repo_root() / DOC
    plots = []
    for model, curves in payload.get("simulator_curves", {}).items():
        plot = doc.parent / f"results_dynamic_cpa_{model}.png"
        plot_curves(curves, str(plot), f"{model}: CPA with and without MACPruning ({curves.get('map', 'first map')})")
        plots.append(str(plot))
    write_doc(payload, doc, plots)
    log(f"wrote {doc}")


if __name__ == "__main__":
    sys.exit(main())
