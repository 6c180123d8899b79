"""A figure of a PAGCP sweep log: per unit (in sweep order) the committed ratio, coloured by the task that stopped
it, and the MACs its removal saves. Used by the `pagcp` recipe (next to ``pagcp_log.json``) and the benchmark."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

from ..errors import ConfigError

GRID_END = "(grid end)"


def plot_sweep(logs: Mapping[str, Mapping[str, Any]], path: Path, base_macs: Optional[float] = None) -> Path:
    """Writes a PNG with one row of two panels per sweep log.

    Args:
        logs: {title: a sweep log} (`Pagcp.provenance()`: ``units`` with ``group``, ``ratio``, ``stopped_by``,
            ``macs_saved``, ``kept_by_topk``).
        path: the PNG (written atomically).
        base_macs: the model's MACs; when given, savings are shown as a fraction of it.

    Returns:
        `path`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not logs:
        raise ConfigError("pagcp plot: no sweep log to plot")
    tasks: Dict[str, Any] = {}
    for log in logs.values():
        if "units" not in log:
            raise ConfigError("pagcp plot: a log has no 'units' (was the sweep run? Pagcp.provenance())")
        for u in log["units"]:
            tasks.setdefault(u["stopped_by"] or GRID_END, None)
    palette = plt.get_cmap("tab10")
    colours = {t: palette(i % 10) for i, t in enumerate(tasks)}
    fig, axes = plt.subplots(len(logs), 2, figsize=(14, 3.4 * len(logs)), squeeze=False)
    for (title, log), (left, right) in zip(logs.items(), axes):
        units: Sequence[Mapping[str, Any]] = log["units"]
        xs = range(len(units))
        names = [u["group"] for u in units]
        for x, u in zip(xs, units):
            kept = u.get("kept_by_topk", True)
            left.bar(x, u["ratio"], color=colours[u["stopped_by"] or GRID_END], alpha=1.0 if kept else 0.35,
                     hatch=None if kept else "//")
            saved = u["macs_saved"] / base_macs if base_macs else u["macs_saved"]
            right.bar(x, saved if kept else 0.0, color=colours[u["stopped_by"] or GRID_END])
        left.set_ylim(0, 1)
        left.set_ylabel("ratio removed")
        left.set_title(f"{title}\nratio the oracle passed (sweep order; hatched: dropped by top-k)", fontsize=8)
        right.set_ylabel("MACs saved" + (" (fraction)" if base_macs else ""))
        right.set_title(f"{title}\nMACs the passed removal saves (a MACs budget may apply less)", fontsize=8)
        for ax in (left, right):
            ax.set_xticks(list(xs))
            ax.set_xticklabels(names, rotation=90, fontsize=5)
        handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
        left.legend(handles, list(colours), fontsize=6, title="stopped by", title_fontsize=6, loc="upper left",
                    bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    from ..io import atomic_write

    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return path
