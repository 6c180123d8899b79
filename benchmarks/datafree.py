"""Data-free pruning + quantization with closed-form compensation (UDFC-style, seed paper 12), no fine-tuning.

    python benchmarks/datafree.py --json out.json                 # full: 10/20/30/50% x fp32/8/6/4 bits, 10k images
    python benchmarks/datafree.py --quick --json out.json         # 30% + 6 bits only, under 10 minutes on 2 cores
    python benchmarks/datafree.py --models cifar_resnet56 --no-vit --ratios 0.2 --bits 8,6 --test 1000 --json a.json
    python benchmarks/datafree.py --render q.json,a.json --md docs/results_datafree.md   # how the docs page was merged
    python benchmarks/datafree.py --md docs/results_datafree.md   # also write the results page

On the pretrained CIFAR ResNet-20 and ResNet-56 (option A), ResNet-56 option B and (quantization only) the CIFAR
ViT, for each pruning ratio and bit width, five arms share one pruning budget (the same fraction of every
block-internal group; groups the closed form cannot compensate are left unpruned in every arm):

* naive: prune the l1-smallest channels and quantise, nothing else;
* Neuron Merging: its data-free merge rule on the same l1 channels (pruning only; quantization naive);
* UDFC: the closed form with data-free BatchNorm moments plus the BN-expected bias correction, pruning the channels
  the kept ones rebuild best under those moments (`selection="reconstruction"`, the same count per group);
* UDFC (l1 channels): the same closed form on the l1 channels (`selection="plan"`), to separate the two effects;
* measured: UDFC with moments measured on 256 training images (the data-free estimate's bound; channels chosen as
  in UDFC, data-free).

Accuracy is top-1 on the CIFAR-10 JPEG test set (a seeded random subset in quick mode); the next layer's error is
the relative squared error of each compensated layer's consumer on real test inputs (mean over layers). A second
table compares the data-free moments E[A], E[A^2] with the measured ones per layer, and says where the Gaussian
assumption fails. No VGG-16 weights exist locally (prunekit.models.cifar_vgg is random-init), so VGG-16 is skipped.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import markdown_table, markdown_targets, print_table, print_targets, report, target, write_json  # noqa

from prunekit.io import atomic_write_text  # noqa: E402

MODELS = {"cifar_resnet20": "ResNet-20 (A)", "cifar_resnet56": "ResNet-56 (A)", "cifar_resnet56_b": "ResNet-56 (B)"}
VIT = "cifar_vit"
ARMS = {
    "naive": dict(compensation="none", bias_correction=False),
    "neuron_merging": dict(compensation="neuron_merging", bias_correction=False),
    "udfc": dict(compensation="udfc"),
    "udfc_l1": dict(compensation="udfc", selection="plan"),
    "measured": dict(compensation="udfc", moments="measured"),
}
SETTINGS = {
    "quick": dict(ratios=(0.3,), bits=(6,), test=1000, vit_bits=(6,), error_images=32),
    "full": dict(ratios=(0.1, 0.2, 0.3, 0.5), bits=(None, 8, 6, 4), test=10000, vit_bits=(8, 6, 4),
                 error_images=64),
}
CALIBRATION = 256


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def load_images(name: str, n_test: int):
    """(test images [n, 3, 32, 32], labels [n], 256 calibration training images) for model `name`."""
    from prunekit.data import load
    from prunekit.models import info

    meta = info(name)
    norm = (meta.mean, meta.std)
    test = load("cifar10", split="test", normalize=norm)
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:n_test].tolist()
    x = torch.stack([test[i][0] for i in order])
    y = torch.tensor([test[i][1] for i in order])
    train = load("cifar10", split="train", normalize=norm)
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(1))[:CALIBRATION].tolist()
    calib = torch.stack([train[i][0] for i in pick])
    return x, y, calib


@torch.no_grad()
def accuracy(model, x, y, batch: int = 500) -> float:
    model.eval()
    hits = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return hits / len(x)


def raw_images(name: str, n: int = CALIBRATION) -> torch.Tensor:
    """The first `n` CIFAR-10 test images in their original pixels: the domain the BN statistics were estimated on
    (the JPEG copy shifts them; see the data README)."""
    from prunekit.data import load
    from prunekit.models import info

    meta = info(name)
    data = load("cifar10_raw", normalize=(meta.mean, meta.std), limit=n)
    return torch.stack([data[i][0] for i in range(len(data))])


def moment_rows(model, inputs, images) -> List[Dict[str, Any]]:
    """Per compensable layer: data-free E[A], E[A^2] against the measured ones, split into the part due to the
    Gaussian shape (a Gaussian with the measured mean and deviation, against the measurement) and the rest (the
    BN statistics differ from the data's), and whether z ~ N(beta, s^2) holds (s: `bn_output_std`; statistics
    within 25% of a deviation, |skew| <= 0.5, |excess kurtosis| <= 1: medians over channels)."""
    import prunekit
    from prunekit.compensate.layers import find_layers
    from prunekit.compensate.moments import relu_mean, relu_second_moment
    from prunekit.compensate.probe import probe_model
    from prunekit.compensate.sources import bn_moments, bn_output_std, record_inputs, run_layer
    from prunekit.quant.fold import folded_weight_bias

    probe = probe_model(model, inputs)
    layers, _ = find_layers(model, prunekit.analyze(model, inputs).groups, probe)
    mods = dict(model.named_modules())
    rec = record_inputs(model, [images[i:i + 128] for i in range(0, len(images), 128)],
                        [lay.producer for lay in layers.values()])
    rel = lambda a, b: float((a - b).norm() / b.norm().clamp_min(1e-12))  # noqa: E731
    rows = []
    for lay in sorted(layers.values(), key=lambda item: item.order):
        w, b = folded_weight_bias(mods[lay.producer], mods[lay.bn])
        bn = mods[lay.bn]
        C = w.shape[0]
        df = bn_moments(w.flatten(1), w.flatten(1), bn.bias.detach(), bn_output_std(bn), torch.arange(C), "single")
        z = torch.cat([run_layer(mods[lay.producer], x, w, b).movedim(1, -1).reshape(-1, C).double()
                       for x in rec.inputs[lay.producer]])
        a = z.clamp_min(0)
        mean_a, second_a = a.mean(0), (a * a).mean(0)
        mu, sd = z.mean(0), z.std(0)
        gamma = bn_output_std(bn).clamp_min(1e-12)
        shift = float(((mu - bn.bias.detach().double()).abs() / gamma).median())
        spread = float((sd / gamma - 1).abs().median())
        zc = (z - mu) / sd.clamp_min(1e-12)
        skew = float((zc ** 3).mean(0).abs().median())
        kurt = float(((zc ** 4).mean(0) - 3).abs().median())
        holds = shift <= 0.25 and spread <= 0.25 and skew <= 0.5 and kurt <= 1.0
        why = [f"{k} {v:.2f}" for k, v, lim in (("mean shift", shift, 0.25), ("abs(std ratio - 1)", spread, 0.25),
                                                 ("abs(skew)", skew, 0.5), ("abs(excess kurtosis)", kurt, 1.0))
               if v > lim]
        rows.append({"layer": lay.bn, "err_mean": rel(df.mean_a, mean_a), "err_second": rel(df.second_a, second_a),
                     "shape_err_mean": rel(relu_mean(mu, sd), mean_a),
                     "shape_err_second": rel(relu_second_moment(mu, sd), second_a), "gaussian": holds,
                     "shift": shift, "spread": spread, "skew": skew, "kurtosis": kurt, "fails": "; ".join(why)})
    return rows


def run_model(name: str, s: Dict[str, Any], seconds: List[float]) -> Dict[str, Any]:
    """All ratios x bits x arms on one CNN."""
    import prunekit
    from prunekit.compensate.udfc import UDFCConfig, compress
    from prunekit.models import build, example_inputs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build(name).eval()
    inputs = example_inputs(name)
    x, y, calib = load_images(name, s["test"])
    base = accuracy(model, x, y)
    log(f"{name}: original accuracy {base:.4f} on {len(x)} test images")
    err_images = [x[: s["error_images"]]]
    rows = []
    for ratio in s["ratios"]:
        plan = prunekit.plan(model, inputs, ratio=ratio, criterion="l1")
        for bits in s["bits"]:
            for arm, options in ARMS.items():
                t0 = time.perf_counter()
                cfg = UDFCConfig(bits=bits, prune_uncompensable=False, **options)
                result = compress(model, inputs, cfg, plan=plan,
                                  calibration=[calib[:128], calib[128:]] if cfg.moments == "measured" else None,
                                  eval_images=err_images)
                acc = accuracy(result.model, x, y)
                rows.append({"model": name, "ratio": ratio, "bits": bits or 32, "arm": arm, "accuracy": acc,
                             "next_layer_error": result.report["next_layer_error_mean"],
                             "removed_channels": result.report["removed_channels"],
                             "uncompensated": len(result.report["uncompensated_pruned_groups"]),
                             "seconds": round(time.perf_counter() - t0, 2)})
                seconds.append(time.perf_counter() - t0)
            log(f"{name} ratio {ratio} bits {bits or 32}: " + ", ".join(
                f"{r['arm']} {r['accuracy']:.4f}" for r in rows[-len(ARMS):]))
    moments = moment_rows(model, inputs, raw_images(name))
    return {"model": name, "original_accuracy": base, "rows": rows, "moments": moments}


def run_vit(s: Dict[str, Any]) -> Dict[str, Any]:
    """Quantization-only rows on the CIFAR ViT (no BatchNorm: the data-free arm has no moments to use)."""
    from prunekit.compensate.udfc import UDFCConfig, compress
    from prunekit.models import build, example_inputs

    model = build(VIT).eval()
    inputs = example_inputs(VIT)
    x, y, calib = load_images(VIT, s["test"])
    base = accuracy(model, x, y)
    log(f"{VIT}: original accuracy {base:.4f}")
    rows = []
    for bits in s["vit_bits"]:
        for arm in ("naive", "udfc", "measured"):
            cfg = UDFCConfig(bits=bits, **ARMS[arm])
            result = compress(model, inputs, cfg, calibration=[calib[:128], calib[128:]]
                              if cfg.moments == "measured" else None)
            rows.append({"model": VIT, "ratio": 0.0, "bits": bits, "arm": arm, "accuracy": accuracy(result.model, x, y),
                         "bias_corrected": result.report["bias_correction"]["corrected"],
                         "unquantized": len(result.report["unquantized_matrices"])})
        log(f"{VIT} bits {bits}: " + ", ".join(f"{r['arm']} {r['accuracy']:.4f}" for r in rows[-3:]))
    return {"model": VIT, "original_accuracy": base, "rows": rows}


def cell(rows, model, ratio, bits, arm, key="accuracy") -> Optional[float]:
    for r in rows:
        if r["model"] == model and r["ratio"] == ratio and r["bits"] == bits and r["arm"] == arm:
            return r[key]
    return None


def compute_targets(results: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    rows = [r for res in results if res["model"] in MODELS for r in res["rows"]]
    head = None
    a, b = cell(rows, "cifar_resnet56", 0.3, 6, "udfc"), cell(rows, "cifar_resnet56", 0.3, 6, "naive")
    if a is not None and b is not None:
        head = 100 * (a - b)
    keys = {(r["model"], r["ratio"], r["bits"]) for r in rows}
    vs_naive = [100 * (cell(rows, *k, "udfc") - cell(rows, *k, "naive")) for k in keys]
    vs_nm = [100 * (cell(rows, *k, "udfc") - cell(rows, *k, "neuron_merging")) for k in keys]
    gauss = [max(m["err_mean"], m["err_second"]) for res in results for m in res.get("moments", []) if m["gaussian"]]
    return [
        target("resnet56_30pct_6bit_udfc_minus_naive_points", head, ">=", 15.0),
        target("min_udfc_minus_naive_points", min(vs_naive) if vs_naive else None, ">=", 0.0),
        target("min_udfc_minus_neuron_merging_points", min(vs_nm) if vs_nm else None, ">=", 0.0),
        target("max_moment_rel_error_where_gaussian", max(gauss) if gauss else None, "<=", 0.10),
    ]


def markdown(results: List[Dict[str, Any]], targets, command: str, mode: str) -> str:
    from _common import doc_command

    lines = ["# Data-free pruning + quantization (UDFC-style), no fine-tuning", "",
             f"Generated by `{' ; '.join(doc_command(c) for c in command.split(' ; '))}` ({mode} mode), rendered "
             "by the same script. Method and derivation: [udfc.md](udfc.md). "
             "Accuracy: top-1 on the CIFAR-10 JPEG test set (see the settings in the script); *err*: the next "
             "layer's relative squared output error on real test images, mean over compensated layers. Pruning: "
             "the same fraction of every block-internal group (groups the closed form cannot compensate, i.e. the "
             "residual streams, are left unpruned in every arm); naive, N. Merging and *UDFC (l1 channels)* prune "
             "the l1-smallest channels, *UDFC* and *measured* the channels the kept ones rebuild best under the "
             "data-free moments (same count per group). VGG-16: skipped, no pretrained weights exist locally "
             "(`prunekit.models.cifar_vgg` is random-init, and training one was not done).", "", "## Targets", ""]
    lines += markdown_targets(targets)
    for res in results:
        lines += ["", f"## {MODELS.get(res['model'], 'CIFAR ViT (quantization only)')}: original accuracy "
                      f"{res['original_accuracy']:.4f}", ""]
        rows = res["rows"]
        if res["model"] == VIT:
            table = [[f"{b} bit", *[cell(rows, VIT, 0.0, b, arm) for arm in ("naive", "udfc", "measured")]]
                     for b in sorted({r["bits"] for r in rows}, reverse=True)]
            lines += markdown_table(["bits", "naive", "UDFC (data-free)", "measured moments"], table,
                                    cell=lambda v: v if isinstance(v, str) else f"{v:.4f}")
            lines += ["", "No BatchNorm in the ViT: the data-free arm has no moments and no input statistics, so it "
                          "equals naive quantization; the measured arm can still correct the expected output of each "
                          "linear layer (bias correction with measured input means). nn.MultiheadAttention's packed "
                          "in_proj weights stay float32 (not an nn.Linear)."]
            continue
        table = []
        settings = sorted({(r["ratio"], r["bits"]) for r in rows}, key=lambda k: (k[0], -k[1]))  # those that ran
        for ratio, bits in settings:
            accs = [cell(rows, res["model"], ratio, bits, arm) for arm in ARMS]
            errs = [cell(rows, res["model"], ratio, bits, arm, "next_layer_error") for arm in ARMS]
            table.append([f"{int(ratio * 100)}%", "fp32" if bits == 32 else f"{bits} bit",
                          *[f"{a:.4f}" for a in accs], *[f"{e:.3f}" if e is not None else "-" for e in errs],
                          f"{100 * (accs[2] - accs[0]):+.1f}", f"{100 * (accs[2] - accs[1]):+.1f}"])
        lines += markdown_table(["pruned", "bits", "naive", "N. Merging", "UDFC", "UDFC (l1 channels)", "measured",
                                 "err naive", "err NM", "err UDFC", "err UDFC (l1)", "err measured",
                                 "UDFC - naive (pts)", "UDFC - NM (pts)"],
                                table)
        mom = res.get("moments", [])
        if mom:
            ok = [m for m in mom if m["gaussian"]]
            lines += ["", f"Data-free vs measured moments on the first 256 raw-pixel test images ({len(mom)} "
                          f"compensated layers, {len(ok)} where z ~ N(beta, s^2) holds, s the BN output std with "
                          f"eps). *of which shape*: a Gaussian with the measured mean and deviation against the "
                          f"measurement, i.e. the error left if the BN statistics were exact:", ""]
            lines += markdown_table(["layer", "rel err E[A]", "rel err E[A^2]", "of which shape: E[A]", "E[A^2]",
                                     "BN mean shift / BN output std", "Gaussian holds", "why not"],
                                    [[m["layer"], f"{m['err_mean']:.3f}", f"{m['err_second']:.3f}",
                                      f"{m['shape_err_mean']:.3f}", f"{m['shape_err_second']:.3f}",
                                      f"{m['shift']:.3f}", "yes" if m["gaussian"] else "no",
                                      (m["fails"] or "-").replace("|", "\\|")]
                                     for m in mom])
            if ok:
                med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
                lines += ["", f"Median over the {len(ok)} layers where it holds: rel err E[A] "
                          f"{med([m['err_mean'] for m in ok]):.3f}, E[A^2] {med([m['err_second'] for m in ok]):.3f} "
                          f"(the target takes the maximum). The relative error is a norm over the layer's channels: "
                          f"in a nearly dead layer (every channel's beta below zero) E[A] is a tail quantity and the "
                          f"ratio is large although the layer contributes almost nothing."]
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="the headline setting only: 30%% pruning at 6 bits, 1000 test images")
    parser.add_argument("--json", default=None, help="write the JSON report here")
    parser.add_argument("--md", default=None,
                        help="write the markdown results page here (e.g. docs/results_datafree.md)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated CNNs to run")
    parser.add_argument("--no-vit", action="store_true", help="skip the ViT quantization rows")
    parser.add_argument("--ratios", default=None, help="override the pruning ratios, e.g. 0.1,0.3")
    parser.add_argument("--bits", default=None, help="override the bit widths, e.g. 32,8,6,4 (32: float)")
    parser.add_argument("--test", type=int, default=None, help="override the number of test images")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--remoment", action="store_true", help="with --render: recompute the moment tables")
    parser.add_argument("--render", default=None, help="comma-separated JSON reports of earlier runs (e.g. one per "
                        "model, run in parallel): merge them, recompute the targets, write --json / --md; runs nothing")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    mode = "quick" if args.quick else "full"
    s = dict(SETTINGS[mode])
    if args.ratios:
        s["ratios"] = tuple(float(r) for r in args.ratios.split(","))
    if args.bits:
        s["bits"] = tuple(None if int(b) == 32 else int(b) for b in args.bits.split(","))
    if args.test:
        s["test"] = args.test
    if args.ratios or args.bits or args.test:
        mode += " with overrides"
    results, seconds, commands = [], [], []
    if args.render:
        import json

        merged: Dict[str, Dict[str, Any]] = {}
        for path in args.render.split(","):
            earlier = json.loads(Path(path).read_text())
            for res in earlier["models"]:  # several runs of one model (other ratios / bits) become one section
                if res["model"] in merged:
                    merged[res["model"]]["rows"] += res["rows"]
                else:
                    merged[res["model"]] = res
            commands.append(earlier["command"])
            mode = earlier["mode"]
        results = list(merged.values())
        if args.remoment:
            from prunekit.models import build, example_inputs

            for res in results:
                if res["model"] in MODELS:
                    res["moments"] = moment_rows(build(res["model"]).eval(), example_inputs(res["model"]),
                                                 raw_images(res["model"]))
    else:
        for name in [m for m in args.models.split(",") if m]:
            results.append(run_model(name, s, seconds))
        if not args.no_vit:
            results.append(run_vit(s))
    targets = compute_targets(results)
    for res in results:
        rows = res["rows"]
        print_table(f"{res['model']} (original {res['original_accuracy']:.4f})",
                    ["ratio", "bits", "arm", "accuracy", "next-layer err"],
                    [[r["ratio"], r["bits"], r["arm"], r["accuracy"], r.get("next_layer_error")] for r in rows])
    print_targets(targets)
    argv_list = list(argv if argv is not None else sys.argv[1:])
    payload = report("datafree", argv_list, start, [r for res in results for r in res["rows"]], targets,
                     mode=mode, models=results, compress_seconds_mean=sum(seconds) / max(len(seconds), 1))
    if args.json:
        write_json(args.json, payload)
    if args.md:
        command = " ; ".join(commands) if commands else payload["command"]
        atomic_write_text(args.md, markdown(results, targets, command, mode))
        log(f"wrote {args.md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
