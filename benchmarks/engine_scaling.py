"""Engine cost against model depth: narrow Llama stacks of 8, 32 and 128 layers, prunekit beside Torch-Pruning.

Each stack is a transformers ``LlamaForCausalLM`` (hidden 256, intermediate 512, 4 heads, 2 KV heads, vocab 1000,
random weights) traced on ``[1, 16]`` token ids. prunekit is timed over trace + group (``analyze``), ``plan`` and
``apply`` (which verifies) at 50%, uniform, L1. Torch-Pruning is timed over ``BasePruner(...)`` (dependency graph
and group enumeration) plus ``pruner.step()`` with the settings of its LLM example, in a child process with a time
limit; when it hits the limit, the limit is reported as a lower bound. A second Torch-Pruning run that leaves the
attention projections out of the roots (it does terminate) is reported for context.

    python benchmarks/engine_scaling.py --json out.json [--quick] [--profile LAYERS] [--large large [--large-only]]

``--large large`` adds the ~1.5B-parameter row (a random Llama-style model, fp32, ~6 GB): seconds and peak resident
memory of analyse + plan + apply in place with verification, in a fresh process; target peak <= 1.5x the model.

Targets: prunekit_time(128) / prunekit_time(8) <= 20; tp_time(128) / prunekit_time(128) >= 10. With --quick:
8 and 32 layers (128 when it fits in about 3 minutes), Torch-Pruning at 8 layers only; the growth goal is scaled
to the depth ratio (20 for 16x the depth) and the speed-up is taken at the largest depth Torch-Pruning ran.
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (THREADS_HELP, print_table, print_targets, report, run_python, target,  # noqa: E402
                     update_doc_section, write_json)

DEPTHS = (8, 32, 128)
GROWTH_GOAL, SPEEDUP_GOAL = 20.0, 10.0
QUICK_BUDGET_S = 180.0
DOC = Path(__file__).resolve().parent.parent / "docs" / "results_engine.md"


def build_stack(layers: int, seed: int = 0) -> Tuple[torch.nn.Module, torch.Tensor]:
    """A narrow Llama of `layers` layers (seeded random weights) and example ids [1, 16]."""
    from prunekit.models.hf import build_from_config

    model = build_from_config("llama", seed=seed, hidden_size=256, intermediate_size=512, num_attention_heads=4,
                              num_key_value_heads=2, vocab_size=1000, num_hidden_layers=layers,
                              max_position_embeddings=128)
    ids = torch.randint(0, 1000, (1, 16), generator=torch.Generator().manual_seed(seed))
    return model, ids


def time_prunekit(layers: int, repeats: int = 1, profiler: Any = None) -> Dict[str, Any]:
    """Seconds of analyze / plan / apply (verified) at 50% on a stack built once (outside the timing); the median of
    `repeats` runs per stage. A `profiler` such as ``cProfile.Profile`` is enabled around the timed part only."""
    import statistics

    import prunekit

    model, ids = build_stack(layers)
    runs = []
    for _ in range(repeats):
        if profiler is not None:
            profiler.enable()
        t0 = time.perf_counter()
        analysis = prunekit.analyze(model, ids)
        t1 = time.perf_counter()
        plan = prunekit.plan(model, ids, ratio=0.5, criterion="l1", allocator="uniform", analysis=analysis)
        t2 = time.perf_counter()
        pruned = prunekit.apply(model, plan, ids, analysis=analysis)
        t3 = time.perf_counter()
        if profiler is not None:
            profiler.disable()
        runs.append((t1 - t0, t2 - t1, t3 - t2, t3 - t0))
        error = pruned.prunekit_verification.relative_error
        groups, prunable = len(analysis.groups), len(analysis.prunable())
        del pruned, analysis
        gc.collect()
    med = [statistics.median(r[i] for r in runs) for i in range(4)]
    del model
    gc.collect()
    return {"layers": layers, "analyze_s": med[0], "plan_s": med[1], "apply_s": med[2], "prunekit_s": med[3],
            "prunekit_runs_s": [r[3] for r in runs], "groups": groups, "prunable": prunable, "verify_error": error}


LARGE = dict(hidden_size=2048, intermediate_size=5632, num_attention_heads=32, num_key_value_heads=4,
             num_hidden_layers=30, vocab_size=32000, max_position_embeddings=128)  # ~1.45B parameters
PEAK_GOAL = 1.5  # peak resident memory / model size


def large_step(scale: str = "large", inplace: bool = True) -> Dict[str, Any]:
    """Analyse + plan + apply (verified) at 50% on a randomly initialised Llama-style model of about 1.5B
    parameters (fp32, ~6 GB; ``scale="small"`` for a 6-layer, 512-wide smoke version), pruned in place. Run it in
    a fresh process: the peak resident memory is the process' own (``ru_maxrss``), baseline included."""
    import resource

    import prunekit

    config = dict(LARGE) if scale == "large" else dict(LARGE, hidden_size=512, intermediate_size=1408,
                                                       num_attention_heads=8, num_key_value_heads=2,
                                                       num_hidden_layers=6)
    t0 = time.perf_counter()
    model = random_llama(config)
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    after_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    ids = torch.randint(0, config["vocab_size"], (1, 16), generator=torch.Generator().manual_seed(0))
    held_out = torch.randint(0, config["vocab_size"], (1, 12), generator=torch.Generator().manual_seed(1))
    t1 = time.perf_counter()
    analysis = prunekit.analyze(model, ids)
    t2 = time.perf_counter()
    plan = prunekit.plan(model, ids, ratio=0.5, criterion="l1", allocator="uniform", analysis=analysis)
    t3 = time.perf_counter()
    pruned = prunekit.apply(model, plan, ids, inplace=inplace, held_out=held_out)
    t4 = time.perf_counter()
    report_ = pruned.prunekit_verification
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"scale": scale, "params": params, "model_bytes": size, "build_s": build_s, "analyze_s": t2 - t1,
            "plan_s": t3 - t2, "apply_verify_s": t4 - t3, "prunekit_s": t4 - t1, "peak_rss_bytes": peak,
            "rss_after_build_bytes": after_build, "peak_over_model": peak / size,
            "params_after": sum(p.numel() for p in pruned.parameters()), "verify_errors": report_.errors,
            "inplace": inplace}


def random_llama(config: Dict[str, Any], seed: int = 0) -> torch.nn.Module:
    """A ``LlamaForCausalLM`` with random weights (N(0, 0.02), norms at one), built on the meta device and
    filled tensor by tensor: no second copy of the weights and none of the slow per-module initialisation."""
    import transformers

    cfg = transformers.LlamaConfig(**config)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(cfg)
    model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    rotary = type(model.model.rotary_emb)(config=cfg)  # its inv_freq buffer, computed (to_empty left it unset)
    model.model.rotary_emb = rotary
    return model.eval()


def time_large(scale: str, limit_s: float, threads: int) -> Dict[str, Any]:
    """`large_step` in a child process (its own peak memory), limited to `limit_s` seconds."""
    code = ("import json, warnings, torch\nwarnings.filterwarnings('ignore')\n"
            f"torch.set_num_threads({threads})\nfrom engine_scaling import large_step\n"
            f"print(json.dumps(large_step({scale!r})))\n")
    out = run_python(code, timeout_s=limit_s)
    if out["result"] is None:
        tail = out["stderr"].strip().splitlines()[-3:]
        return {"scale": scale, "failed": "timed out" if out["timed_out"] else f"failed: {tail}"}
    return out["result"]


def tp_step(layers: int, variant: str = "example") -> Dict[str, Any]:
    """Torch-Pruning on a fresh stack: ``example`` uses the zoo's settings of its LLM example; ``no_attention_roots``
    also leaves q/k/v projections out of the roots. Returns the seconds of pruner construction and step."""
    from _zoo_torch_pruning import tp_pruner

    import torch_pruning as tp

    model, ids = build_stack(layers)
    t0 = time.perf_counter()
    if variant == "example":
        pruner, _ = tp_pruner("hf_llm", model, ids)
    else:
        ignored = [model.lm_head] + [m for n, m in model.named_modules() if n.endswith(("q_proj", "k_proj", "v_proj"))]
        pruner = tp.pruner.BasePruner(model, example_inputs=ids, importance=tp.importance.GroupMagnitudeImportance(p=1),
                                      pruning_ratio=0.5, ignored_layers=ignored, num_heads={}, in_channel_groups={},
                                      out_channel_groups={}, channel_groups={},
                                      output_transform=lambda out: out.logits.sum())
    t1 = time.perf_counter()
    pruner.step()
    t2 = time.perf_counter()
    return {"layers": layers, "variant": variant, "init_s": t1 - t0, "step_s": t2 - t1, "tp_s": t2 - t0}


def time_tp(layers: int, variant: str, limit_s: float, threads: int) -> Dict[str, Any]:
    """`tp_step` in a child process limited to `limit_s` seconds: {tp_s, lower_bound: bool, ...}."""
    code = ("import json, warnings, torch\nwarnings.filterwarnings('ignore')\n"
            f"torch.set_num_threads({threads})\nfrom engine_scaling import tp_step\n"
            f"print(json.dumps(tp_step({layers}, {variant!r})))\n")
    out = run_python(code, timeout_s=limit_s)
    if out["timed_out"]:
        return {"tp_s": limit_s, "lower_bound": True, "note": f"still running after {limit_s:.0f} s"}
    if out["result"] is None:
        return {"tp_s": None, "lower_bound": False, "note": f"failed: {out['stderr'].strip().splitlines()[-1:]}"}
    return {**out["result"], "lower_bound": False}


def profile_prunekit(layers: int, top: int = 25) -> str:
    """cProfile of `time_prunekit(layers)`: the `top` entries by cumulative and by own time."""
    import cProfile
    import io
    import pstats

    time_prunekit(2)  # imports and first-call costs stay out of the profile
    prof = cProfile.Profile()
    time_prunekit(layers, profiler=prof)
    text = io.StringIO()
    stats = pstats.Stats(prof, stream=text)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    return text.getvalue()


def _fmt_tp(entry: Optional[Dict[str, Any]]) -> str:
    if not entry or entry.get("tp_s") is None:
        return "-" if not entry else entry.get("note", "-")
    return (">" if entry["lower_bound"] else "") + f"{entry['tp_s']:.1f}"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None, help="write results to this JSON file")
    parser.add_argument("--quick", action="store_true", help="8 and 32 layers (128 when the budget allows)")
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    parser.add_argument("--tp-limit", type=float, default=600.0, help="longest Torch-Pruning run in seconds")
    parser.add_argument("--repeats", type=int, default=3, help="prunekit runs per depth (median)")
    parser.add_argument("--depths", default="", help="comma-separated layer counts instead of 8,32,128")
    parser.add_argument("--profile", type=int, default=0, help="also cProfile prunekit at this depth")
    parser.add_argument("--docs", default=None, help="markdown file whose engine_scaling section is rewritten "
                                                     "(default docs/results_engine.md on a full run)")
    parser.add_argument("--large", choices=("no", "small", "large"), default="no",
                        help="also prune a random Llama-style model in place: 'large' ~1.5B parameters (fp32, "
                             "~6 GB of weights; needs ~9 GB free), 'small' a 6-layer smoke version")
    parser.add_argument("--large-only", action="store_true", help="run only the --large row")
    args = parser.parse_args(argv)
    argv_used = sys.argv[1:] if argv is None else list(argv)
    torch.set_num_threads(args.threads)
    import warnings

    warnings.filterwarnings("ignore")
    start = time.perf_counter()
    time_prunekit(2)  # warm-up: imports and first-call costs would otherwise land on the smallest depth
    rows: List[Dict[str, Any]] = []
    depths = tuple(int(d) for d in args.depths.split(",") if d) or DEPTHS
    if args.large_only:
        if args.large == "no":
            parser.error("--large-only needs --large small|large")
        depths = ()
    for layers in depths:
        elapsed = time.perf_counter() - start
        if args.quick and layers == depths[-1] and len(depths) > 2 and rows:
            projected = rows[-1]["prunekit_s"] * (layers / rows[-1]["layers"]) * 1.3 * args.repeats
            if elapsed + projected > QUICK_BUDGET_S:
                print(f"--quick: skipping {layers} layers (projected {projected:.0f} s after {elapsed:.0f} s)")
                break
        row = time_prunekit(layers, repeats=args.repeats)
        # The cap decides the speed-up target either way: beyond it Torch-Pruning is >= SPEEDUP_GOAL x slower.
        cap = min(args.tp_limit, max(20.0 if args.quick else 120.0, SPEEDUP_GOAL * 1.05 * row["prunekit_s"]))
        if args.quick and layers != depths[0]:
            row["tp"] = {"tp_s": None, "lower_bound": False, "note": "skipped in --quick"}
        else:
            row["tp"] = time_tp(layers, "example", cap, args.threads)
        if not args.quick or layers == depths[0]:
            row["tp_no_attention_roots"] = time_tp(layers, "no_attention_roots",
                                                   min(args.tp_limit, 60.0 if args.quick else 600.0), args.threads)
        rows.append(row)
        print(f"{layers:4d} layers: prunekit {row['prunekit_s']:.2f} s, Torch-Pruning {_fmt_tp(row['tp'])} s, "
              f"without attention roots {_fmt_tp(row.get('tp_no_attention_roots'))} s", flush=True)
    targets = []
    if rows:
        base = rows[0]
        last = rows[-1]
        ratio = last["prunekit_s"] / base["prunekit_s"]
        goal = GROWTH_GOAL * (last["layers"] / base["layers"]) / (DEPTHS[-1] / DEPTHS[0])  # 20 for 16x the depth
        targets = [target(f"prunekit_time({last['layers']}) / prunekit_time({base['layers']})", ratio, "<=", goal)]
    with_tp = [r for r in rows if r["tp"].get("tp_s") is not None]
    if with_tp:
        r = with_tp[-1]
        name = f"tp_time({r['layers']}) / prunekit_time({r['layers']})" + (" [lower bound]" if r["tp"]["lower_bound"]
                                                                            else "")
        targets.append(target(name, r["tp"]["tp_s"] / r["prunekit_s"], ">=", SPEEDUP_GOAL))
    columns = ["layers", "groups", "analyze s", "plan s", "apply s", "prunekit s", "TP (example) s",
               "TP (no attention roots) s"]
    table = [[r["layers"], r["groups"], r["analyze_s"], r["plan_s"], r["apply_s"], r["prunekit_s"], _fmt_tp(r["tp"]),
              _fmt_tp(r.get("tp_no_attention_roots"))] for r in rows]
    print_table("engine scaling: narrow Llama stacks, 50% uniform L1", columns, table)
    large = None
    if args.large != "no":
        large = time_large(args.large, 3600.0, args.threads)
        if "failed" not in large:
            gb = 1e9
            print_table(f"engine scaling: random Llama-style model ({large['params'] / 1e9:.2f}B parameters, fp32), "
                        "analyse + plan + apply in place (verified)",
                        ["params", "model GB", "analyse s", "plan s", "apply + verify s", "total s", "peak RSS GB",
                         "peak / model", "params after"],
                        [[large["params"], large["model_bytes"] / gb, large["analyze_s"], large["plan_s"],
                          large["apply_verify_s"], large["prunekit_s"], large["peak_rss_bytes"] / gb,
                          large["peak_over_model"], large["params_after"]]])
            targets.append(target(f"peak_rss / model_size ({large['params'] / 1e9:.2f}B, in place)",
                                  large["peak_over_model"], "<=", PEAK_GOAL))
        else:
            print(f"large row: {large['failed']}")
            targets.append(target("peak_rss / model_size (large row failed)", float("inf"), "<=", PEAK_GOAL))
    print_targets(targets)
    extra: Dict[str, Any] = {}
    if args.profile:
        extra["profile"] = profile_prunekit(args.profile)
        print(extra["profile"])
    if large is not None:
        extra["large"] = large
    payload = report("engine_scaling", argv_used, start, rows, targets, **extra)
    doc = args.docs if args.docs is not None else ("" if args.quick or args.depths or args.large_only else str(DOC))
    if doc and large is not None and "failed" not in large:
        from _common import doc_command

        update_doc_section(doc, "engine_scaling_large", "Engine scaling: a 1.5B-parameter model in place", "\n".join([
            f"Generated by `{doc_command(payload['command'])}`, {args.threads} thread(s): a randomly initialised "
            f"Llama-style model ({large['params']:,} parameters, fp32, {large['model_bytes'] / 1e9:.2f} GB), "
            "analysed, planned (50%, uniform, L1) and pruned in place with verification on an example and a "
            "held-out input, in a fresh process. Peak resident memory includes the Python process itself.", "",
            "| analyse s | plan s | apply + verify s | total s | peak RSS GB | peak / model | params after |",
            "|---|---|---|---|---|---|---|",
            f"| {large['analyze_s']:.1f} | {large['plan_s']:.1f} | {large['apply_verify_s']:.1f} | "
            f"{large['prunekit_s']:.1f} | {large['peak_rss_bytes'] / 1e9:.2f} | {large['peak_over_model']:.2f} | "
            f"{large['params_after']:,} |"]))
    if doc and rows:
        from _common import doc_command, markdown_table, markdown_targets

        lines = [f"Generated by `{doc_command(payload['command'])}`, {args.threads} thread(s). Seconds (prunekit: "
                 f"median of {args.repeats} runs). *TP (example)*: Torch-Pruning with the settings of its LLM example "
                 "(heads grouped, lm_head ignored); '>' marks a run stopped at its time limit (a lower bound). "
                 "*TP (no attention roots)*: the same with q/k/v projections left out of the roots, a run that "
                 "terminates, for context.", ""]
        lines += markdown_table(columns, table) + [""] + markdown_targets(targets)
        update_doc_section(doc, "engine_scaling", "Engine scaling: prunekit vs Torch-Pruning", "\n".join(lines))
    if args.json:
        write_json(args.json, payload)
    return 0 if payload["all_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
