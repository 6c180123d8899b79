"""Helpers shared by the benchmark scripts: target rows, a rich table printer, the JSON report, timed subprocesses.

Every benchmark writes one JSON report::

    {"benchmark": name, "command": "python benchmarks/x.py ...", "environment": {...}, "seconds": s,
     "rows": [...], "targets": [{"name", "value", "op", "target", "passed"}], ...}
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

OPS = (">=", "<=")
THREADS_HELP = ("torch (and onnxruntime) intra-op threads; default 1: on a shared 2-core machine two OpenMP threads "
                "that lose their core to another process make a small matmul 100x slower")


def target(name: str, value: Optional[float], op: str, goal: float) -> Dict[str, Any]:
    """One target row; `passed` is False when `value` is None or NaN (not measured).

    Args:
        name: what is measured, e.g. ``"prunekit_silently_wrong"``.
        value: the measured figure (None when it could not be measured).
        op: ``">="`` or ``"<="``.
        goal: the threshold.
    """
    if op not in OPS:
        raise ValueError(f"benchmarks._common.target: op must be one of {OPS}, got {op!r}")
    ok = value is not None and not (isinstance(value, float) and math.isnan(value))
    passed = ok and (value >= goal if op == ">=" else value <= goal)
    return {"name": name, "value": value, "op": op, "target": goal, "passed": bool(passed)}


def fmt(value: Any, digits: int = 4) -> str:
    """Compact text for a table cell: floats with `digits` significant digits, None as ``-``."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.{digits}g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]],
                styles: Optional[Sequence[Optional[str]]] = None) -> None:
    """Print a rich table; `rows` are sequences of cell values formatted with `fmt`."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for i, row in enumerate(rows):
        style = styles[i] if styles is not None and i < len(styles) else None
        table.add_row(*[escape(fmt(v)) for v in row], style=style)  # cells are text, never markup
    Console(width=200).print(table)


def print_targets(targets: List[Dict[str, Any]]) -> None:
    """Print the target rows as a table (failed rows in red)."""
    print_table("targets", ["target", "value", "op", "goal", "ok"],
                [[t["name"], t["value"], t["op"], t["target"], t["passed"]] for t in targets],
                [None if t["passed"] else "red" for t in targets])


def environment() -> Dict[str, Any]:
    """`prunekit env` as a dict (versions, threads, devices)."""
    from prunekit.cli.env import environment_report

    return environment_report()


def median_latency_ms(model: Any, x: Any, repeats: int = 30, warmup: int = 5) -> float:
    """Median milliseconds of `model(x)` in inference mode after `warmup` calls (eval mode is set)."""
    import torch

    model.eval()
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    return 1000 * sorted(times)[len(times) // 2]


def write_json(path: str | os.PathLike, payload: Dict[str, Any]) -> Path:
    """Write `payload` as indented JSON, atomically (temporary file + rename); non-JSON values become strings."""
    from prunekit.io import atomic_write_text

    return atomic_write_text(path, json.dumps(payload, indent=2, default=str))


def report(benchmark: str, argv: Sequence[str], start: float, rows: List[Dict[str, Any]],
           targets: List[Dict[str, Any]], **extra: Any) -> Dict[str, Any]:
    """The standard JSON payload of a benchmark run."""
    return {
        "benchmark": benchmark,
        "command": " ".join(["python", f"benchmarks/{benchmark}.py", *argv]),
        "environment": environment(),
        "seconds": round(time.perf_counter() - start, 1),
        "rows": rows,
        "targets": targets,
        "all_passed": bool(targets) and all(t["passed"] for t in targets),
        **extra,
    }


def doc_command(command: str) -> str:
    """The command line as a results page shows it: without the ``--json PATH`` / ``--docs PATH`` arguments."""
    words, out, skip = command.split(), [], False
    for word in words:
        if skip:
            skip = False
            continue
        if word in ("--json", "--docs"):
            skip = True
            continue
        if word.startswith(("--json=", "--docs=")):
            continue
        out.append(word)
    return " ".join(out)


def run_python(code: str, timeout_s: float, env: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Run `code` in a fresh Python process with a wall-clock limit; the child prints one JSON line last.

    Returns:
        ``{"timed_out": bool, "seconds": wall seconds, "result": parsed last JSON line or None, "stderr": tail}``.
    """
    full_env = dict(os.environ, **(env or {}))
    root = str(Path(__file__).resolve().parent.parent)
    full_env["PYTHONPATH"] = os.pathsep.join([root, str(Path(__file__).resolve().parent),
                                              full_env.get("PYTHONPATH", "")])
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s,
                              env=full_env)
    except subprocess.TimeoutExpired:
        return {"timed_out": True, "seconds": time.perf_counter() - start, "result": None, "stderr": ""}
    result = None
    for line in reversed(proc.stdout.strip().splitlines()):
        try:
            result = json.loads(line)
            break
        except json.JSONDecodeError:
            continue
    return {"timed_out": False, "seconds": time.perf_counter() - start, "result": result,
            "stderr": proc.stderr[-2000:], "returncode": proc.returncode}


TARGET_COLUMNS = ("target", "value", "op", "goal", "passed")


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[Any]],
                   cell: Callable[[Any], str] = lambda v: v if isinstance(v, str) else fmt(v, 3)) -> List[str]:
    """A markdown table (header, rule, one line per row) as lines; non-string cells go through `cell`."""
    return (["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] +
            ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


def markdown_target_table(targets: Sequence[Dict[str, Any]],
                          value: Callable[[Any], str] = lambda v: f"{v:.4g}") -> List[str]:
    """The targets as a markdown table: name, measured value (through `value`), op, goal, passed."""
    return markdown_table(TARGET_COLUMNS, [[t["name"], value(t["value"]), t["op"], str(t["target"]), str(t["passed"])]
                                           for t in targets])


def markdown_targets(targets: Sequence[Dict[str, Any]]) -> List[str]:
    """One bullet per target: name, measured value, goal, met or MISSED."""
    return [f"- {t['name']} = {fmt(t['value'], 3)} (target {t['op']} {fmt(t['target'])}): "
            f"{'met' if t['passed'] else 'MISSED'}" for t in targets]


def update_doc_section(path: str | os.PathLike, key: str, title: str, body: str) -> Path:
    """Replace (or append) the section of a markdown file between ``<!-- key:start -->`` and ``<!-- key:end -->``.

    Each benchmark owns its section, so several scripts can write one results page without clobbering each other.
    """
    from prunekit.io import atomic_write_text

    path = Path(path)
    text = path.read_text() if path.exists() else "Every section below is generated by the script named in it.\n"
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    section = f"{start}\n### {title}\n\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, text)
