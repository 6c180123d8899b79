"""Assemble docs/results.md from the tables the benchmark scripts wrote (docs/results_*.md).

No figure is typed by hand: each section is the file a benchmark generated, in a fixed order.
    python benchmarks/make_results.py
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = [
    ("results_reference.md", "Reference models (benchmarks/reference_models.py)"),
    ("results_engine.md", "Pruning engine (benchmarks/engine_zoo.py, engine_scaling.py, engine_latency.py)"),
    ("results_cifar.md", "Sparsity training, group pruning and distillation on CIFAR-10 (benchmarks/pipeline_cifar.py)"),
    ("results_detect.md", "Detection (benchmarks/pipeline_detect.py)"),
    ("results_kvcache.md", "KV-cache compression on SmolLM2-135M (benchmarks/kvcache.py)"),
    ("results_kvcache_quick.md", "KV-cache compression, quick mode (benchmarks/kvcache.py --quick)"),
    ("results_pdp.md", "PDP soft masks: unstructured, N:M and channel sparsity (benchmarks/pdp.py)"),
]


def main() -> int:
    docs = ROOT / "docs"
    parts = ["# Results", "",
             "Every table below was written by the benchmark script named in its heading; the commands that made "
             "them are inside each section. Machines are noisy: latency figures are medians and ratios.", ""]
    for name, title in SECTIONS:
        path = docs / name
        parts += [f"## {title}", ""]
        parts += [path.read_text().strip(), ""] if path.exists() else ["(not generated yet: run the script)", ""]
    sys.path.insert(0, str(ROOT))
    from prunekit.io import atomic_write_text

    atomic_write_text(docs / "results.md", "\n".join(parts) + "\n")
    print(f"wrote {docs / 'results.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
