"""`prunekit env`: versions, threads and devices, for bug reports."""
from __future__ import annotations

COMMAND = "env"
HELP = "print versions, threads and devices (paste this into bug reports)"


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def environment_report() -> dict:
    import importlib.metadata as md
    import os
    import platform

    import torch

    from .. import __version__
    from ..paths import data_root

    def version(pkg: str) -> str:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return "not installed"

    report = {
        "prunekit": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "data_root": str(data_root()),
        "data_root_exists": data_root().exists(),
    }
    for pkg in ("numpy", "safetensors", "transformers", "onnx", "onnxruntime", "torch-pruning", "kvpress",
                "pycocotools", "scikit-learn"):
        report[pkg] = version(pkg)
    return report


def run(args) -> int:
    import json

    report = environment_report()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="prunekit environment")
    table.add_column("item")
    table.add_column("value")
    for key, value in report.items():
        table.add_row(key, str(value))
    Console().print(table)
    return 0
