"""`prunekit run <recipe>`: run (or resume) a paper's recipe from a YAML/TOML config plus ``--set`` overrides.

    prunekit run gcp --config examples/gcp_cifar_resnet56.yaml --set stage1.epochs=1
    prunekit run slim-cwd --config examples/slim_cwd_cifar_resnet56.yaml --set out_dir=runs/slim
    prunekit run gcp --config examples/gcp_cifar_mosaic_yolov8n.yaml --set task.weights=detector.safetensors
    prunekit run                      # lists the recipes

Rerunning the same command resumes: finished stages are skipped, an interrupted stage continues from its last
training checkpoint.
"""
from __future__ import annotations

COMMAND = "run"
HELP = "run or resume a recipe (prunekit run gcp --config examples/gcp_cifar_resnet56.yaml)"


def add_arguments(parser) -> None:
    parser.add_argument("recipe", nargs="?", default=None, help="recipe name (omit to list them)")
    parser.add_argument("--config", default=None, help="YAML or TOML config file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. stage1.epochs=1 (repeatable)")
    parser.add_argument("--out-dir", default=None, help="shortcut for --set out_dir=PATH")
    parser.add_argument("--model", default=None, help="shortcut for --set task.model=NAME: a registry model, or a "
                                                      "pruned checkpoint folder (prunekit prune --out) to start from")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def _list_recipes(console) -> None:
    from rich.table import Table

    from ..methods import RECIPES

    table = Table(title="recipes")
    table.add_column("name")
    table.add_column("description")
    for name in RECIPES.names():
        table.add_row(name, RECIPES.describe(name))
    console.print(table)


def run(args) -> int:
    import json

    from rich.console import Console

    from ..config import to_dict
    from ..errors import UnknownNameError
    from ..methods import RECIPES

    console = Console()
    if args.recipe is None:
        _list_recipes(console)
        return 2
    try:
        cls = RECIPES.get(args.recipe)
    except UnknownNameError as exc:
        console.print(f"[red]{exc}[/red]")
        _list_recipes(console)
        return 2
    overrides = list(args.overrides) + ([f"out_dir={args.out_dir}"] if args.out_dir else []) + \
        ([f"task.model={args.model}"] if args.model else [])
    recipe = cls.from_file(args.config, overrides)
    if args.print_config:
        console.print_json(json.dumps(to_dict(recipe.config), default=str))
        return 0
    console.print(f"running recipe [bold]{recipe.name}[/bold] into {recipe.config.out_dir}")
    result = recipe.run()
    _write_reports(result, recipe.config.out_dir, args)
    if result["status"] != "complete":
        console.print(f"stopped in stage '{result.get('stopped_in')}' (max_steps): rerun the same command to resume")
        return 0
    base = result["original"]
    metric = result["metric"]
    console.print(f"{metric} {result[metric]:.4f}  params {result['params']:,} ({result['params_keep']:.3f} of "
                  f"{base['params']:,})  MACs/example {result['macs']:,} ({result['macs_keep']:.3f} of "
                  f"{base['macs']:,})  latency {result['latency_ms']:.2f} ms")
    console.print(f"model: {result['model_dir']}  result: {recipe.config.out_dir}/result.json  report: "
                  f"{recipe.config.out_dir}/report.html")
    return 0


def _write_reports(result, out_dir, args) -> None:
    """report.md (before/after table) and report.html (plus widths and training curves) beside result.json."""
    from pathlib import Path

    from ..io import atomic_write_text
    from ..report import run_report

    command = f"prunekit run {args.recipe}" + (f" --config {args.config}" if args.config else "")
    page = run_report(result, out_dir, command)
    page.write(Path(out_dir) / "report.html")
    base, lines = result.get("original") or {}, [f"# {command}", "", f"status: {result.get('status')}", ""]
    keys = [k for k in ([result.get("metric")] + ["params", "macs", "latency_ms"]) if k in result and k in base]
    if keys:
        lines += ["| | before | after |", "|---|---|---|"] + [f"| {k} | {base[k]} | {result[k]} |" for k in keys]
    atomic_write_text(Path(out_dir) / "report.md", "\n".join(lines) + "\n")
