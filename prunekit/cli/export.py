"""`prunekit export DIR --onnx / --torch-export`: deployable files from a pruned checkpoint folder, each checked
against the PyTorch model on held-out inputs (other random values of the shapes the plan was traced with)."""
from __future__ import annotations

COMMAND = "export"
HELP = "export a pruned checkpoint folder to ONNX (checked with onnxruntime) and/or torch.export"


def add_arguments(parser) -> None:
    parser.add_argument("folder", help="a checkpoint folder written by `prunekit prune` / prunekit.save")
    parser.add_argument("--onnx", nargs="?", const="", default=None, metavar="PATH",
                        help="write ONNX (default path: FOLDER/model.onnx) and compare it with onnxruntime")
    parser.add_argument("--torch-export", nargs="?", const="", default=None, metavar="PATH",
                        help="write a torch.export program (default path: FOLDER/model.pt2), checked against eager")
    parser.add_argument("--input-shape", default=None, help="example input shape, e.g. 1,3,32,32 (default: the "
                                                            "plan's example inputs)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest relative difference accepted")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset")
    parser.add_argument("--allow-factory", default=None, metavar="MODULE:FUNCTION",
                        help="run this model factory if the plan names it (only for folders you trust)")


def _inputs(folder, plan, input_shape):
    """(export inputs, held-out check inputs of the same shapes)."""
    import torch

    from ..errors import ConfigError
    from ..prune.plan import make_inputs

    if input_shape:
        shape = [int(s) for s in input_shape.split(",")]
        return (torch.randn(shape, generator=torch.Generator().manual_seed(0)),
                torch.randn(shape, generator=torch.Generator().manual_seed(1)))
    if plan.inputs is None:
        raise ConfigError(f"{folder}/plan.json describes no example inputs: pass --input-shape")
    return make_inputs(plan.inputs, seed=0), make_inputs(plan.inputs, seed=1)


def run(args) -> int:
    from pathlib import Path

    from rich.console import Console

    from ..errors import ConfigError
    from ..export import export_onnx_checked, export_program, load, read_plan
    from ..export.folder import staged_file

    if args.onnx is None and args.torch_export is None:
        raise ConfigError("nothing to export: pass --onnx and/or --torch-export")
    folder = Path(args.folder)
    if not (folder / "plan.json").exists():
        raise ConfigError(f"{folder} is not a prunekit checkpoint folder (no plan.json)")
    console = Console()
    plan, _ = read_plan(folder)
    model = load(folder, allow_factory=args.allow_factory).eval()
    inputs, check = _inputs(folder, plan, args.input_shape)
    if args.onnx is not None:
        path = Path(args.onnx or folder / "model.onnx")
        with staged_file(path) as tmp:
            r = export_onnx_checked(model, inputs, tmp, check_inputs=check, tolerance=args.tolerance,
                                    opset=args.opset)
        console.print(f"ONNX: {path} ({r.exporter} exporter); onnxruntime vs PyTorch on held-out inputs: "
                      f"{r.relative_error:.2g} relative (tolerance {args.tolerance})")
    if args.torch_export is not None:
        path = Path(args.torch_export or folder / "model.pt2")
        with staged_file(path) as tmp:
            export_program(model, inputs, tmp, check_inputs=check, tolerance=args.tolerance)
        console.print(f"torch.export: {path} (checked against eager within {args.tolerance})")
    return 0
