"""One self-contained HTML report: sections of tables, notes and static plots (matplotlib PNG, base64-embedded).

`HtmlReport` is the page; `prune_report`, `run_report` and `kv_report` fill it for the three commands that write
``report.html`` beside ``report.md``. Nothing is fetched when the file is opened (no scripts, fonts or links out), so
it can be mailed or archived as one file. Every value shown is escaped: group ids and reasons come from user models.
"""
from __future__ import annotations

import base64
import datetime
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:72rem;color:#222;
padding:0 1rem}h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;border-bottom:1px solid #ddd;
padding-bottom:.2rem}.sub{color:#666;margin-top:0}section{margin:1.5rem 0}table{border-collapse:collapse;
font-size:.85rem;margin:.5rem 0}th,td{border:1px solid #ddd;padding:.25rem .6rem;text-align:left}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%;
border:1px solid #eee}.note{color:#555;font-size:.9rem}.warn{color:#a15c00}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return f"<td>{'-' if value is None else _esc(value)}</td>"
    if isinstance(value, int):
        return f'<td class="num">{value:,}</td>'
    if isinstance(value, float):
        return f'<td class="num">{value:.4g}</td>'
    return f"<td>{_esc(value)}</td>"


def figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@dataclass
class HtmlReport:
    """A page of sections, rendered to one HTML string.

    Attributes:
        title: the page heading.
        subtitle: one line under it (command, date).
        sections: (id, title, body html) in order.
    """

    title: str
    subtitle: str = ""
    sections: List[Tuple[str, str, str]] = field(default_factory=list)

    def _add(self, title: str, body: str) -> None:
        sid = "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-") or f"s{len(self.sections)}"
        self.sections.append((sid, title, body))

    def table(self, title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], note: str = "") -> None:
        """A section holding a table (cells escaped; ints with thousands separators, floats to 4 digits)."""
        head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
        body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
        self._add(title, (f'<p class="note">{_esc(note)}</p>' if note else "") +
                  f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def image(self, title: str, png: bytes, alt: str, note: str = "", extra_html: str = "") -> None:
        """A section holding a PNG (embedded as base64), an optional note and more HTML (e.g. a table)."""
        data = base64.b64encode(png).decode("ascii")
        self._add(title, (f'<p class="note">{_esc(note)}</p>' if note else "") +
                  f'<img alt="{_esc(alt)}" src="data:image/png;base64,{data}">' + extra_html)

    def text(self, title: str, lines: Sequence[str], warn: bool = False) -> None:
        """A section of plain paragraphs."""
        cls = ' class="warn"' if warn else ""
        self._add(title, "".join(f"<p{cls}>{_esc(line)}</p>" for line in lines))

    def render(self) -> str:
        nav = " · ".join(f'<a href="#{sid}">{_esc(t)}</a>' for sid, t, _ in self.sections)
        parts = [f'<section id="{sid}"><h2>{_esc(t)}</h2>{body}</section>' for sid, t, body in self.sections]
        return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{_esc(self.title)}</title><style>{_CSS}</style></head><body>"
                f"<h1>{_esc(self.title)}</h1><p class=\"sub\">{_esc(self.subtitle)}</p><nav>{nav}</nav>"
                + "".join(parts) + "</body></html>\n")

    def write(self, path: str | Path) -> Path:
        from ..io import atomic_write_text

        return atomic_write_text(path, self.render())


def _stamp(command: str) -> str:
    from .. import __version__

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"{command} · prunekit {__version__} · {now}"


# --- sections shared by the commands -------------------------------------------------------------------------------

def add_widths(page: HtmlReport, widths: Dict[str, Sequence[int]], unit: str = "output channels") -> None:
    """Per-layer widths before / after: a bar chart and the table."""
    if not widths:
        page.text("Per-layer widths", ["no layer widths recorded"])
        return
    plt = _pyplot()
    names = list(widths)
    fig, ax = plt.subplots(figsize=(min(max(6.0, 0.22 * len(names)), 18.0), 4.0))
    xs = range(len(names))
    ax.bar(xs, [widths[n][0] for n in names], color="#cccccc", label="before")
    ax.bar(xs, [widths[n][1] for n in names], color="#1f77b4", label="after")
    ax.set_ylabel(unit)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    ax.legend()
    fig.tight_layout()
    rows = [(n, int(widths[n][0]), int(widths[n][1]), f"{widths[n][1] / widths[n][0]:.2f}" if widths[n][0] else "-")
            for n in names]
    head = "".join(f"<th>{c}</th>" for c in ("layer", "before", "after", "kept"))
    table = "<table><thead><tr>" + head + "</tr></thead><tbody>" + "".join(
        "<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows) + "</tbody></table>"
    page.image("Per-layer widths", figure_png(fig), "per-layer widths before and after", extra_html=table)


def add_sensitivity(page: HtmlReport, curves: Any, metric: str = "loss", hint: str = "") -> None:
    """Per-group sensitivity curves (`prunekit.planning.sensitivity.SensitivityCurves`), or how to get them."""
    if curves is None:
        page.text("Per-layer sensitivity", [hint or "not measured for this model: run `prunekit analyze --model NAME "
                                            "--sensitivity --data DATASET` (cached; the next report shows it)"])
        return
    if curves.baseline.get(metric) is None:
        metric = "loss"
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    xs = [0.0] + list(curves.ratios)
    ranked = sorted(curves.groups, key=lambda gid: -curves.damage(gid, metric)[-1])
    for gid in ranked[:12]:  # the most sensitive; all are in the table
        ax.plot(xs, [curves.baseline[metric]] + list(curves.groups[gid][metric]), marker="o", label=gid)
    ax.set_xlabel("fraction of the group's units removed (that group alone)")
    ax.set_ylabel(f"held-out {metric}")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    cols = ["group", "size"] + [f"{r:g}" for r in curves.ratios]
    head = "".join(f"<th>{_esc(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(_cell(v) for v in [gid, int(curves.groups[gid]["size"])] +
                                     [float(v) for v in curves.groups[gid][metric]]) + "</tr>" for gid in ranked)
    note = (f"held-out {metric} (baseline {curves.baseline[metric]:.4g}) when one group loses its lowest-"
            f"{curves.order} units; data {json.dumps(curves.data)}; {len(curves.skipped)} group(s) not measured")
    page.image("Per-layer sensitivity", figure_png(fig), "per-group sensitivity curves", note=note,
               extra_html=f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def add_latency(page: HtmlReport, latency: Dict[str, Sequence[Any]]) -> None:
    """Latency per runtime, before / after (ms; a string is a failure reason)."""
    measured = {k: v for k, v in latency.items() if all(isinstance(x, (int, float)) for x in v)}
    failed = {k: v for k, v in latency.items() if k not in measured}
    rows = [(k, float(v[0]), float(v[1]), f"{v[0] / v[1]:.2f}x" if v[1] else "-") for k, v in measured.items()]
    rows += [(k, "-", "-", " / ".join(str(x) for x in v)) for k, v in failed.items()]
    if not measured:
        page.text("Latency per runtime", ["latency was not measured (--latency false or inputs that are not one "
                                          "tensor)"] + [f"{k}: {v}" for k, v in failed.items()])
        return
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.2))
    names = list(measured)
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [measured[n][0] for n in names], width=0.4, color="#cccccc", label="before")
    ax.bar([x + 0.2 for x in xs], [measured[n][1] for n in names], width=0.4, color="#1f77b4", label="after")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names)
    ax.set_ylabel("median ms per call")
    ax.legend()
    fig.tight_layout()
    head = "".join(f"<th>{c}</th>" for c in ("runtime", "before (ms)", "after (ms)", "speed-up"))
    table = "<table><thead><tr>" + head + "</tr></thead><tbody>" + "".join(
        "<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows) + "</tbody></table>"
    page.image("Latency per runtime", figure_png(fig), "latency per runtime before and after", extra_html=table)


def add_refused(page: HtmlReport, refused: Optional[Sequence[Dict[str, Any]]]) -> None:
    """Groups left whole and why; None: the command does not record them."""
    if refused is None:
        page.text("Refused groups", ["not recorded by this command: `prunekit analyze --model NAME` lists every "
                                     "group and why it is refused"])
        return
    if not refused:
        page.text("Refused groups", ["every channel group was prunable"])
        return
    page.table("Refused groups", ["group", "units", "why"], [(r["group"], r["size"], r["reason"]) for r in refused],
               note="groups left whole, and why (an operation the engine cannot rewrite, the model's output, ...)")


def add_training_curves(page: HtmlReport, curves: Dict[str, List[Tuple[int, float]]]) -> None:
    """Training loss against step, one line per training stage."""
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        page.text("Training curves", ["no training losses recorded (no training stage, or no checkpoint yet)"])
        return
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    for name, points in curves.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o" if len(points) < 8 else None, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    page.image("Training curves", figure_png(fig), "training loss per stage",
               note="training loss every 10 steps (or per epoch for short stages), per stage, from each stage's last "
                    "training checkpoint")


# --- the three commands --------------------------------------------------------------------------------------------

def prune_report(report: Any, command: str, latency: Optional[Dict[str, Sequence[Any]]] = None,
                 sensitivity: Any = None, warnings: Sequence[str] = ()) -> HtmlReport:
    """The page of `prunekit prune`: a `prunekit.prune.report.PruneReport` plus latency per runtime and cached
    sensitivity curves."""
    page = HtmlReport("prunekit prune report", _stamp(command))
    page.table("Before and after", ["", "before", "after", "reduction"], report.rows())
    v = report.verification
    if v:
        page.text("Verification", [f"max |pruned - masked original| = {v['max_abs_error']:.3g} (relative "
                                   f"{v['relative_error']:.3g}, tolerance {v['tolerance']}): "
                                   f"{'passed' if v['passed'] else 'FAILED'}"], warn=not v["passed"])
    if warnings:
        page.text("Warnings", list(warnings), warn=True)
    add_widths(page, report.widths)
    add_sensitivity(page, sensitivity)
    add_latency(page, latency or ({"eager": (report.before.latency_ms, report.after.latency_ms)}
                                  if report.before.latency_ms is not None else {}))
    add_refused(page, report.refused)
    return page


def run_report(result: Dict[str, Any], out_dir: str | Path, command: str) -> HtmlReport:
    """The page of `prunekit run`: the recipe's result, per-group widths of its final plan, training curves."""
    out = Path(out_dir)
    page = HtmlReport(f"prunekit run {result.get('recipe', '')} report", _stamp(command))
    base = result.get("original") or {}
    metric = result.get("metric")
    rows = []
    for key in ([metric] if metric else []) + ["params", "macs", "latency_ms"]:
        if key in result and key in base:
            b, a = base[key], result[key]
            ratio = f"{b / a:.2f}x" if isinstance(b, (int, float)) and isinstance(a, (int, float)) and a else "-"
            rows.append((key, b, a, ratio if key != metric else ""))
    if rows:
        page.table("Before and after", ["", "before", "after", "reduction"], rows)
    else:
        page.text("Before and after", [f"status {result.get('status')}: stopped in stage "
                                       f"'{result.get('stopped_in')}' (rerun the same command to resume)"])
    page.table("Stages", ["stage", "details"], [(name, json.dumps(info, default=str)[:400])
                                                 for name, info in (result.get("stages") or {}).items()])
    plan = _final_plan(result)
    add_widths(page, {gid: (size, size - len(plan.removed.get(gid, [])))
                      for gid, size in plan.group_sizes.items()} if plan else {}, unit="units per group")
    add_sensitivity(page, None, hint="per-group sensitivity is measured with `prunekit analyze --sensitivity` on "
                                     "a registered model (not part of a recipe run)")
    if "latency_ms" in result and "latency_ms" in base:
        add_latency(page, {"eager": (base["latency_ms"], result["latency_ms"])})
    else:
        add_latency(page, {})
    add_refused(page, None)
    add_training_curves(page, stage_losses(out, result))
    return page


def kv_report(model: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], quality: Dict[str, Dict[str, Any]],
              speed: Dict[str, float], command: str, memory_mb: Optional[Dict[str, float]] = None) -> HtmlReport:
    """The page of `prunekit kv eval`: the results table and perplexity (when measured), cache memory and decode
    speed per method."""
    page = HtmlReport(f"prunekit kv eval report: {model}", _stamp(command))
    page.table("Results", columns, rows, note="memory and speed at the given context, batch 1")
    plt = _pyplot()
    methods = list(speed)
    panels = [("decode ms / token", [speed[m] for m in methods], "#ff7f0e")]
    if memory_mb and all(m in memory_mb for m in methods):
        panels.insert(0, ("cache MB (fp32)", [memory_mb[m] for m in methods], "#2ca02c"))
    ppl = [quality.get(m, {}).get("ppl") for m in methods]
    if all(isinstance(p, (int, float)) for p in ppl):
        panels.insert(0, ("perplexity (lower is better)", ppl, "#1f77b4"))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), squeeze=False)
    for ax, (label, values, color) in zip(axes[0], panels):
        ax.bar(methods, values, color=color)
        ax.set_ylabel(label)
    fig.tight_layout()
    page.image("Quality and speed", figure_png(fig), "quality and decode speed per method")
    return page


def stage_losses(out_dir: Path, result: Dict[str, Any]) -> Dict[str, List[Tuple[int, float]]]:
    """(step, loss) per stage, read from each stage's last training checkpoint (plain JSON, ``state.json``)."""
    from ..train.checkpoint import latest_checkpoint

    curves: Dict[str, List[Tuple[int, float]]] = {}
    for i, name in enumerate(result.get("stages") or {}):
        folder = out_dir / f"{i + 1}_{name}" / "ckpt"
        try:
            latest = latest_checkpoint(folder) if folder.is_dir() else None
            meta = json.loads((latest / "state.json").read_text()) if latest else {}
        except (OSError, ValueError):
            continue
        progress = meta.get("progress") or {}
        points = [(int(s), float(v)) for s, v in progress.get("losses") or [] if isinstance(v, (int, float))]
        epochs = [e for e in progress.get("epochs") or [] if isinstance(e.get("train_loss"), (int, float))]
        if len(points) < 2 and epochs:  # a short stage logs fewer steps than epochs: its epoch means, at epoch ends
            steps = int(progress.get("step") or len(epochs))
            points = [(round(steps * (i + 1) / len(epochs)), float(e["train_loss"])) for i, e in enumerate(epochs)]
        curves[name] = points
    return curves


def _final_plan(result: Dict[str, Any]):
    from ..prune.plan import PruningPlan

    model_dir = result.get("model_dir")
    path = Path(model_dir) / "plan.json" if model_dir else None
    if path is None or not path.is_file():
        return None
    try:
        return PruningPlan.load(path)
    except Exception:  # noqa: BLE001 -- a report never fails the run it describes
        return None
