"""Before/after report of a pruning: parameters, MACs, latency, verification, refused groups, per-layer widths."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import nn


@dataclass
class Measure:
    params: int
    macs: Optional[int]
    latency_ms: Optional[float]
    accuracy: Optional[float] = None


@dataclass
class PruneReport:
    before: Measure
    after: Measure
    verification: Dict[str, Any] = field(default_factory=dict)
    refused: List[Dict[str, Any]] = field(default_factory=list)
    widths: Dict[str, List[int]] = field(default_factory=dict)

    def rows(self) -> List[tuple]:
        b, a = self.before, self.after

        def ratio(x, y):
            return f"{x / y:.2f}x" if x and y else "-"

        rows = [("params", f"{b.params:,}", f"{a.params:,}", ratio(b.params, a.params))]
        if b.macs is not None:
            rows.append(("MACs / example", f"{b.macs:,}", f"{a.macs:,}", ratio(b.macs, a.macs)))
        if b.latency_ms is not None:
            rows.append(("latency (ms)", f"{b.latency_ms:.2f}", f"{a.latency_ms:.2f}", ratio(b.latency_ms, a.latency_ms)))
        if b.accuracy is not None:
            rows.append(("accuracy", f"{b.accuracy:.4f}", f"{a.accuracy:.4f}" if a.accuracy is not None else "-", ""))
        return rows

    def print(self, title: str = "prunekit") -> None:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for col in ("", "before", "after", "reduction"):
            table.add_column(col)
        for row in self.rows():
            table.add_row(*row)
        console = Console()
        console.print(table)
        if self.verification:
            v = self.verification
            console.print(f"verification: max |pruned - masked original| = {v['max_abs_error']:.3g} "
                          f"(relative {v['relative_error']:.3g}, tolerance {v['tolerance']}) -> "
                          f"{'passed' if v['passed'] else 'FAILED'}")
        if self.refused:
            console.print(f"{len(self.refused)} group(s) left unpruned; first reasons:")
            for r in self.refused[:5]:
                console.print(f"  {r['group']} ({r['size']}): {r['reason']}")

    def write(self, out_dir: str | Path) -> None:
        from ..io import atomic_write_text

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "report.json", json.dumps(asdict(self), indent=1))
        lines = ["| | before | after | reduction |", "|---|---|---|---|"]
        lines += [f"| {' | '.join(r)} |" for r in self.rows()]
        atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
        plot_widths(self.widths, out / "widths.png")


def measure(model: nn.Module, inputs: Any, latency: bool = True, threads: int = 1) -> Measure:
    from ..metrics.macs import macs_per_example
    from ..metrics.params import count_parameters

    model.eval()
    try:  # per example, whatever batch the inputs have
        macs = int(macs_per_example(model, inputs)) if isinstance(inputs, torch.Tensor) else None
    except Exception:
        macs = None
    lat = None
    if latency and isinstance(inputs, torch.Tensor):
        from ..metrics.latency import eager_latency

        lat = eager_latency(model, inputs, warmup=3, repeats=15, threads=threads).median_ms
    return Measure(count_parameters(model), macs, lat)


def layer_widths(model: nn.Module) -> Dict[str, int]:
    """Output width of every conv / linear layer."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            out[name] = m.out_channels
        elif isinstance(m, nn.Linear):
            out[name] = m.out_features
    return out


def build_report(original: nn.Module, pruned: nn.Module, inputs: Any, analysis=None, latency: bool = True) -> PruneReport:
    before, after = measure(original, inputs, latency), measure(pruned, inputs, latency)
    w0, w1 = layer_widths(original), layer_widths(pruned)
    widths = {k: [w0[k], w1.get(k, 0)] for k in w0}
    verification = {}
    rep = getattr(pruned, "prunekit_verification", None)
    if rep is not None:
        verification = {"max_abs_error": rep.max_abs_error, "relative_error": rep.relative_error,
                        "tolerance": rep.tolerance, "passed": rep.passed, "inexact_groups": rep.inexact_groups}
    refused = []
    if analysis is not None:
        refused = [{"group": g.id, "size": g.size, "reason": "; ".join(g.reasons)} for g in analysis.refused()]
    return PruneReport(before, after, verification, refused, widths)


def plot_widths(widths: Dict[str, List[int]], path: Path) -> None:
    """A bar chart of each layer's width before and after pruning."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not widths:
        return
    names = list(widths)
    fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(names)), 4))
    xs = range(len(names))
    ax.bar(xs, [widths[n][0] for n in names], color="#cccccc", label="before")
    ax.bar(xs, [widths[n][1] for n in names], color="#1f77b4", label="after")
    ax.set_ylabel("output channels")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    ax.legend()
    fig.tight_layout()
    from ..io import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
