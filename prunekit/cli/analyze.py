"""`prunekit analyze`: the channel groups of a model, and with ``--sensitivity`` their measured sensitivity curves.

    prunekit analyze --model cifar_resnet20                       # groups: size, unit, prunable or why not
    prunekit analyze --model digits_cnn --sensitivity --data digits --json curves.json
    prunekit prune --model digits_cnn --criterion sensitivity --allocator global --ratio 0.5   # uses the cache

Sensitivity: for each prunable group and each ratio, that group alone loses its lowest units (``--order``) and the
model is evaluated on held-out data (``--split``, default test). Results are cached (model weights + data + ratios);
the ``sensitivity`` criterion and the HTML reports read the cache.
"""
from __future__ import annotations

COMMAND = "analyze"
HELP = "list a model's channel groups; --sensitivity: measure per-group loss/accuracy curves on held-out data"


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="registry name, module:function, or Hugging Face folder")
    parser.add_argument("--input-shape", default=None, help="example input shape, e.g. 1,3,32,32")
    parser.add_argument("--tokens", default=None, help="example token batch shape, e.g. 2,16")
    parser.add_argument("--sensitivity", action="store_true", help="measure per-group sensitivity curves")
    parser.add_argument("--data", default=None, help="held-out dataset (prunekit ls datasets; default: the model's)")
    parser.add_argument("--split", default="test", help="dataset split (default test)")
    parser.add_argument("--batches", type=int, default=4, help="held-out batches (default 4)")
    parser.add_argument("--batch-size", type=int, default=64, help="held-out batch size (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="which held-out items (default 0)")
    parser.add_argument("--ratios", default="0.25,0.5,0.75", help="removed fractions per group (default "
                                                                  "0.25,0.5,0.75)")
    parser.add_argument("--order", default="l1", help="data-free criterion ranking units inside a group (default l1)")
    parser.add_argument("--metric", default="loss", choices=["loss", "accuracy"], help="metric shown (default loss)")
    parser.add_argument("--no-cache", action="store_true", help="measure again and do not write the cache")
    parser.add_argument("--json", default=None, help="also write the groups / curves here (JSON)")


def run(args) -> int:
    import json

    from rich.console import Console

    from ..errors import ConfigError
    from ..io import atomic_write_text
    from ..planning import analyse
    from ._models import example_inputs_for, resolve_model

    console = Console()
    model, _ = resolve_model(args.model, allow_factory=True)  # typed on the command line
    inputs = example_inputs_for(args.model, model, args.input_shape, args.tokens)
    with console.status("tracing the model"):
        analysis = analyse(model, inputs)
    if not args.sensitivity:
        _print_groups(console, analysis)
        if args.json:
            atomic_write_text(args.json, json.dumps({"groups": [
                {"id": g.id, "size": g.size, "unit": g.unit, "prunable": g.prunable, "exact": g.exact,
                 "reasons": list(g.reasons)} for g in analysis.groups]}, indent=1))
        return 0
    try:
        ratios = tuple(float(r) for r in str(args.ratios).split(",") if r.strip())
    except ValueError:
        raise ConfigError(f"--ratios: expected comma-separated fractions, e.g. 0.25,0.5,0.75; got {args.ratios!r}") \
            from None
    curves = sensitivity_for(args.model, model, inputs, analysis, data=args.data, split=args.split,
                             batches=args.batches, batch_size=args.batch_size, seed=args.seed, ratios=ratios,
                             order=args.order, use_cache=not args.no_cache)
    print_curves(console, curves, args.metric)
    if args.json:
        curves.save(args.json)
        console.print(f"wrote {args.json}")
    return 0


def sensitivity_for(spec: str, model, inputs, analysis=None, data=None, split: str = "test", batches: int = 4,
                    batch_size: int = 64, seed: int = 0, ratios=(0.25, 0.5, 0.75), order: str = "l1",
                    use_cache: bool = True, progress: bool = True):
    """Curves of a registered model on held-out batches of `data` (default: the model's own dataset)."""
    from ..errors import ConfigError
    from ..models import MODELS, info
    from ..planning.calibration import calibration_data
    from ..planning.config import CalibrationConfig
    from ..planning.sensitivity import SensitivityConfig, measure

    config = SensitivityConfig(ratios=ratios, order=order)  # bad ratios refused before the data is read
    if data is None:
        data = info(spec).dataset if spec in MODELS else None
        if data is None:
            raise ConfigError("--data: name the held-out dataset (prunekit ls datasets)")
    cal = CalibrationConfig(data=data, split=split, batches=batches, batch_size=batch_size, seed=seed)
    held_out, loss_fn = calibration_data(spec, cal)
    described = {"dataset": data, "split": split, "batches": batches, "batch_size": batch_size, "seed": seed}
    return measure(model, inputs, held_out, loss_fn, config, data=described, analysis=analysis, progress=progress,
                   use_cache=use_cache)


def _print_groups(console, analysis) -> None:
    from rich.table import Table

    table = Table(title=f"{len(analysis.groups)} channel groups, {len(analysis.prunable())} prunable")
    for col in ("group", "size", "unit", "prunable", "why not / note"):
        table.add_column(col)
    for g in analysis.groups:
        table.add_row(g.id, str(g.size), g.unit, "yes" if g.prunable else "no", "; ".join(g.reasons)[:100])
    console.print(table)


def print_curves(console, curves, metric: str = "loss") -> None:
    """One row per group: its size and `metric` at each ratio (baseline in the title)."""
    from rich.table import Table

    base = curves.baseline.get(metric)
    if base is None:
        metric, base = "loss", curves.baseline["loss"]
    table = Table(title=f"sensitivity: held-out {metric} when one group loses a fraction of its units "
                        f"(baseline {base:.4f}; {curves.data})")
    table.add_column("group")
    table.add_column("size")
    for r in curves.ratios:
        table.add_column(f"{r:g}", justify="right")
    ranked = sorted(curves.groups, key=lambda gid: -curves.damage(gid, metric)[-1])
    for gid in ranked:
        g = curves.groups[gid]
        table.add_row(gid, str(g["size"]), *[f"{v:.4f}" for v in g[metric]])
    console.print(table)
    if curves.skipped:
        console.print(f"{len(curves.skipped)} group(s) not measured (not prunable, inexact or single-unit)")
