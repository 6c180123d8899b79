"""Fuzzing the pruning engine: random architectures, random ratios, criteria and allocators, checked independently.

    python benchmarks/fuzz.py --json out.json            # 500 generated models
    python benchmarks/fuzz.py --quick --json out.json    # 100 models, a smoke run (well under a minute on 1 core)
    python benchmarks/fuzz.py --examples 2000 --seed 3   # more, another stream
    python benchmarks/fuzz.py --json out.json --docs docs/results_fuzz.md   # also (re)write the results page section

Models come from the hypothesis strategy `prunekit.testing.fuzz_models.model_specs` (conv / grouped / depthwise
conv, BatchNorm, GroupNorm, LayerNorm, attention, add, broadcast mul, cat, split / chunk, flatten, permute, channel
shuffle, one stem branch per input). Each is planned with `prunekit.plan` at a random ratio with a random data-free
criterion (l1, l2, fpgm, random, bn_scale) and allocator (uniform, global), pruned with `prunekit.apply` WITHOUT the
engine's own verification, and compared on held-out inputs with a masked original computed by
`prunekit.testing.fuzz_check` (relative tolerance 1e-4). Outcomes: ok / refused / silently_wrong / crash.
Targets: no silently wrong model, no crash, groups refused by an operation (inexact LayerNorm groups included) at
most 10% of all groups; the groups refused only for being the model's output width are counted apart.
"""
from __future__ import annotations

import argparse
import collections
import logging
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import (THREADS_HELP, doc_command, markdown_table, markdown_target_table, print_table,  # noqa: E402
                     print_targets, report, target, update_doc_section, write_json)

from prunekit.testing.fuzz_check import ALLOCATORS, CRITERIA, OUTCOMES, run_case  # noqa: E402
from prunekit.testing.fuzz_models import model_specs  # noqa: E402


def fuzz(examples: int, seed: int) -> List[Dict[str, Any]]:
    """Run `examples` generated cases; one row per case (spec, settings, outcome, counts, detail)."""
    from hypothesis import HealthCheck, Phase, given, settings, strategies as st
    from rich.progress import track

    rows: List[Dict[str, Any]] = []
    bar = iter(track(range(examples), description="fuzzing"))

    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(model_specs(), st.floats(0.25, 0.9), st.sampled_from(CRITERIA), st.sampled_from(ALLOCATORS))
    def case(spec, ratio, criterion, allocator):
        result = run_case(spec, ratio, criterion, allocator)
        rows.append({"spec": repr(spec), "ratio": round(ratio, 4), "criterion": criterion, "allocator": allocator,
                     **result.__dict__})
        next(bar, None)

    from hypothesis import seed as hypothesis_seed

    hypothesis_seed(seed)(case)()
    for _ in bar:  # finish the bar when hypothesis stopped early (it may generate fewer distinct cases)
        pass
    return rows


def main(argv=None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100 models instead of 500")
    parser.add_argument("--examples", type=int, default=None, help="number of generated models (default 500)")
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed (the stream of models)")
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    parser.add_argument("--json", type=str, default=None, help="write the JSON report here")
    parser.add_argument("--docs", type=str, default=None, help="markdown file whose fuzz section (quick or full) is "
                                                               "rewritten; nothing under docs/ is written without it")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("prunekit").setLevel(logging.ERROR)  # the per-plan refusal summaries would flood the output
    examples = args.examples or (100 if args.quick else 500)
    start = time.perf_counter()
    rows = fuzz(examples, args.seed)

    counts = collections.Counter(r["outcome"] for r in rows)
    groups = sum(r["groups"] for r in rows)
    refused_groups = sum(r["refused_groups"] for r in rows)
    outputs = sum(r["output_groups"] for r in rows)
    fraction = refused_groups / groups if groups else 0.0
    print_table(f"fuzz: {len(rows)} generated models", ["outcome", "models"],
                [[o, counts.get(o, 0)] for o in OUTCOMES]
                + [["groups refused by an operation / total", f"{refused_groups} / {groups}"],
                   ["groups of the model output (not counted) / total", f"{outputs} / {groups}"]])
    reasons: collections.Counter = collections.Counter()
    for r in rows:
        reasons.update(r["reasons"])
    if reasons:
        print_table("refused groups by reason", ["reason", "groups"], reasons.most_common(12))
    for r in rows:
        if r["outcome"] in ("silently_wrong", "crash"):
            print(f"[{r['outcome']}] {r['spec']} ratio={r['ratio']} {r['criterion']}/{r['allocator']}\n"
                  f"  {r['detail'].strip().splitlines()[-1] if r['detail'] else ''}")
    targets = [target("silently_wrong", counts.get("silently_wrong", 0), "<=", 0),
               target("crashes", counts.get("crash", 0), "<=", 0),
               target("refused_group_fraction", round(fraction, 4), "<=", 0.10)]
    print_targets(targets)
    payload = report("fuzz", sys.argv[1:] if argv is None else list(argv), start, rows, targets,
                     counts={o: counts.get(o, 0) for o in OUTCOMES}, groups=groups, refused_groups=refused_groups,
                     output_groups=outputs,
                     refused_by_reason=dict(reasons))
    if args.json:
        write_json(args.json, payload)
    if args.docs:
        command = doc_command("python benchmarks/fuzz.py " + " ".join(sys.argv[1:] if argv is None else argv))
        body = [f"`{command}`: {len(rows)} generated models in {time.perf_counter() - start:.0f} s, each checked "
                f"against its masked original (prunekit.testing.fuzz_check).", ""]
        body += markdown_table(["outcome", "models"], [[o, str(counts.get(o, 0))] for o in OUTCOMES]
                               + [["groups refused by an operation / total", f"{refused_groups} / {groups}"],
                                  ["groups of the model output (not counted) / total", f"{outputs} / {groups}"]])
        body += ["", "Refused groups by reason:", ""]
        body += markdown_table(["reason", "groups"], [[k, str(v)] for k, v in reasons.most_common(12)])
        body += ["", *markdown_target_table(targets)]
        update_doc_section(args.docs, "fuzz" + ("_quick" if args.quick else ""),
                           "Engine fuzzing" + (" (quick)" if args.quick else ""), "\n".join(body))
    return payload


if __name__ == "__main__":
    main()
