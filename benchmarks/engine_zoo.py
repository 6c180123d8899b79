"""The pruning engine on the model zoo, beside Torch-Pruning: does each tool prune, refuse, crash, or go silently wrong?

Every model is pruned at 50% of its channels (uniform, L1 magnitude) by prunekit (``analyze`` + ``plan`` + ``apply``)
and by Torch-Pruning 1.6 (``BasePruner`` + ``GroupMagnitudeImportance(p=1)``, output layers ignored, the settings of
its own examples for Hugging Face models). Both results are checked the same way, independently of either tool: the
positions each tool removed are read back by replaying its pruning on a copy whose tensors hold position codes; the
original model with those positions zeroed (the masked original) must compute what the pruned model computes, on
inputs different from the ones used to prune (relative max error <= 1e-4).

Statuses: ``pruned``; ``pruned (inexact: norm statistics)`` (differs from the masked original only because a
LayerNorm/RMSNorm now averages over fewer channels: equal to a reference that renormalises over the kept ones);
``refused`` (nothing prunable, with the reason); ``crashed`` (an exception, or a pruned model that does not run);
``timed out`` (Torch-Pruning still running after 120 s, 60 s with --quick); ``output shape changed``; ``not pruned``;
``SILENTLY WRONG`` (runs, differs from the masked original).

    python benchmarks/engine_zoo.py --json out.json [--quick] [--models a,b] [--docs docs/results_engine.md]
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (THREADS_HELP, print_table, print_targets, report, target, update_doc_section,  # noqa: E402
                     write_json)
from _zoo_models import build_entry, zoo  # noqa: E402
from _zoo_check import TOLERANCE, _finish, _short, _sizes  # noqa: E402
from _zoo_torch_pruning import TP_TIME_LIMIT_S, run_torch_pruning  # noqa: E402

DOC = Path(__file__).resolve().parent.parent / "docs" / "results_engine.md"

def run_prunekit(model: nn.Module, x: Any, x_check: Any) -> Dict[str, Any]:
    import prunekit
    from prunekit.errors import ConfigError, UnsupportedOperationError

    row: Dict[str, Any] = {"tool": "prunekit"}
    examples = prunekit.Examples(list(x)) if isinstance(x, tuple) and len(x) == 2 and all(
        isinstance(t, torch.Tensor) and t.dim() == 4 for t in x) else x  # a batch per branch (op_branch case)
    x = examples[0] if isinstance(examples, prunekit.Examples) else x
    row["params_before"], row["macs_before"] = _sizes(model, x)
    start = time.perf_counter()
    try:
        analysis = prunekit.analyze(model, examples)
        row["groups_prunable"], row["groups_refused"] = len(analysis.prunable()), len(analysis.refused())
        if not analysis.prunable():
            reasons = sorted({r for g in analysis.refused() for r in g.reasons})
            row.update(status="refused", reason="; ".join(reasons[:3]), seconds=time.perf_counter() - start)
            return row
        plan = prunekit.plan(model, examples, ratio=0.5, analysis=analysis)
        pruned = prunekit.apply(model, plan, examples, analysis=analysis)
    except UnsupportedOperationError as exc:
        row.update(status="refused", reason=_short(exc), seconds=time.perf_counter() - start)
        return row
    except ConfigError as exc:
        status = "crashed" if "verification failed" in str(exc) else "refused"
        row.update(status=status, reason=_short(exc), seconds=time.perf_counter() - start)
        return row
    except Exception as exc:  # noqa: BLE001 - an engine crash is a result of this benchmark
        row.update(status="crashed", reason=_short(exc), traceback=traceback.format_exc(limit=-6),
                   seconds=time.perf_counter() - start)
        return row
    row["seconds"] = time.perf_counter() - start
    row["self_reported_error"] = pruned.prunekit_verification.relative_error
    row["reason"] = "; ".join(sorted({r for g in analysis.refused() for r in g.reasons})[:2])
    replay = lambda coded: prunekit.apply(coded, plan, x, analysis=analysis, verify=False)  # noqa: E731
    _finish(row, model, pruned, replay, x, x_check)
    return row


GOOD = ("pruned", "pruned (inexact: norm statistics)")


def summarise(rows: List[Dict[str, Any]]) -> Tuple[Dict[str, Dict[str, int]], List[Dict[str, Any]]]:
    """Counts per tool and status, and the targets."""
    counts: Dict[str, Dict[str, int]] = {}
    for r in rows:
        counts.setdefault(r["tool"], {}).setdefault(r["status"], 0)
        counts[r["tool"]][r["status"]] += 1
    by_model: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for r in rows:
        by_model.setdefault(r["model"], {})[r["tool"]] = r
    failures = 0
    for pair in by_model.values():
        pk, other = pair.get("prunekit"), pair.get("torch-pruning", {})
        if pk is None or pk["status"] == "missing":
            continue
        gave_up = pk["status"] in ("refused", "not pruned") and other.get("status") in GOOD
        if pk["status"] in ("crashed", "timed out") or gave_up:
            failures += 1
    wrong = counts.get("prunekit", {}).get("SILENTLY WRONG", 0)
    targets = [target("prunekit_silently_wrong", wrong, "<=", 0),
               target("prunekit_failures_with_correct_pruning", failures, "<=", 0)]
    return counts, targets


COLUMNS = ["model", "tool", "status", "verify err", "params before", "params after", "MACs before", "MACs after", "s"]


def _cells(r: Dict[str, Any]) -> List[Any]:
    err = r.get("verify_error")
    if err is None and r.get("renormalised_error") is None:
        err = "n/a"
    return [r["model"], r["tool"], r["status"], err, r.get("params_before"), r.get("params_after"),
            r.get("macs_before"), r.get("macs_after"), r.get("seconds")]


def markdown(rows: List[Dict[str, Any]], counts: Dict[str, Dict[str, int]], targets: List[Dict[str, Any]],
             payload: Dict[str, Any]) -> str:
    """The results page section: one line per model, the two tools side by side."""
    from _common import doc_command, fmt, markdown_targets

    env = payload["environment"]
    lines = [f"Generated by `{doc_command(payload['command'])}` (torch {env.get('torch')}, transformers {env.get('transformers')}, "
             f"torch-pruning {env.get('torch-pruning')}). 50% of the channels of every group, uniform, L1. "
             "*err* is the relative max error of the pruned model against the masked original (removed positions "
             "zeroed) on inputs not used to prune, tolerance "
             f"{TOLERANCE:g}; the removed positions are read back independently of either tool. *inexact: norm "
             "statistics* means the model equals a reference whose pruned LayerNorms/RMSNorms average over the kept "
             "channels only. *s*: seconds to prune (prunekit: analyze + plan + verified apply; Torch-Pruning: "
             "pruner + step).", ""]
    head = ["model", "params", "MACs", "prunekit", "err", "params after", "MACs after", "s",
            "Torch-Pruning", "err", "params after", "MACs after", "s", "Torch-Pruning note"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_model: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for r in rows:
        by_model.setdefault(r["model"], {})[r["tool"]] = r
    for model, pair in by_model.items():
        pk, tp = pair.get("prunekit", {}), pair.get("torch-pruning", {})
        cells = [model, fmt(pk.get("params_before")), fmt(pk.get("macs_before"))]
        for r in (pk, tp):
            status = r.get("status", "-")
            status = f"**{status}**" if status in ("SILENTLY WRONG", "crashed", "timed out") else status
            err = r.get("verify_error")
            cells += [status, fmt(err, 2) if err is not None else "n/a", fmt(r.get("params_after")),
                      fmt(r.get("macs_after")), fmt(r.get("seconds"), 3)]
        note = "" if tp.get("status") in GOOD else str(tp.get("reason", "") or "")
        cells.append(note.replace("|", "/").replace("\n", " ")[:140])
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Counts: " + "; ".join(f"{tool}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
                                          for tool, c in counts.items()), ""]
    lines += markdown_targets(targets)
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    import warnings

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None, help="write results to this JSON file")
    parser.add_argument("--quick", action="store_true", help="skip the real-weights SmolLM2-135M")
    parser.add_argument("--models", default="", help="comma-separated subset of the zoo")
    parser.add_argument("--docs", default=None, help="markdown file whose engine_zoo section is rewritten "
                                                     "(default docs/results_engine.md on a full-zoo run without "
                                                     "--quick)")
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    parser.add_argument("--tp-limit", type=float, default=None,
                        help=f"seconds before a Torch-Pruning run is stopped (default {TP_TIME_LIMIT_S:g}, "
                             "60 with --quick)")
    args = parser.parse_args(argv)
    tp_limit = args.tp_limit or (60.0 if args.quick else TP_TIME_LIMIT_S)
    argv_used = sys.argv[1:] if argv is None else list(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    start = time.perf_counter()
    wanted = [m for m in args.models.split(",") if m]
    entries = [e for e in zoo() if (e.name in wanted if wanted else (e.quick or not args.quick))]
    unknown = sorted(set(wanted) - {e.name for e in entries})
    if unknown:
        parser.error(f"unknown zoo models: {', '.join(unknown)}; known: {', '.join(e.name for e in zoo())}")
    rows: List[Dict[str, Any]] = []
    for entry in entries:
        try:
            model, x, x_check, weights = build_entry(entry)
        except Exception as exc:  # noqa: BLE001 - a model that cannot be built here is reported, not fatal
            rows += [{"model": entry.name, "tool": t, "status": "missing", "reason": _short(exc)}
                     for t in ("prunekit", "torch-pruning")]
            continue
        x_tp = x[0] if entry.name == "op_branch_two_examples" else x  # Torch-Pruning takes one example
        for tool, fn in (("prunekit", lambda: run_prunekit(model, x, x_check)),
                         ("torch-pruning", lambda: run_torch_pruning(entry.family, model, x_tp, x_check, tp_limit))):
            row = {"model": entry.name, "family": entry.family, "weights": weights, **fn()}
            rows.append(row)
            print(f"{entry.name:24s} {tool:14s} {row['status']:34s} err={row.get('verify_error')} "
                  f"{row.get('seconds', 0):.1f}s {str(row.get('reason', ''))[:100]}", flush=True)
    counts, targets = summarise(rows)
    print_table("engine zoo: prunekit vs Torch-Pruning at 50%", COLUMNS, [_cells(r) for r in rows],
                ["red" if r["status"] in ("SILENTLY WRONG", "crashed", "timed out") else None for r in rows])
    print_targets(targets)
    payload = report("engine_zoo", argv_used, start, rows, targets, counts=counts, tolerance=TOLERANCE)
    doc = args.docs if args.docs is not None else (str(DOC) if not wanted and not args.quick else "")
    if doc:
        update_doc_section(doc, "engine_zoo", "Engine zoo: prunekit vs Torch-Pruning",
                           markdown(rows, counts, targets, payload))
    if args.json:
        write_json(args.json, payload)
    return 0 if payload["all_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
