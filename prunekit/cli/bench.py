"""`prunekit bench`: parameters, MACs, peak forward memory, eager and onnxruntime latency of a registered model."""
from __future__ import annotations

COMMAND = "bench"
HELP = "measure a model's parameters, MACs, peak memory, eager latency and onnxruntime latency"


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="registered model name (see `prunekit ls models`), or a "
                                                       "pruned checkpoint folder (prunekit prune --out)")
    parser.add_argument("--allow-factory", default=None, metavar="MODULE:FUNCTION",
                        help="for a pruned folder whose plan names a model factory: run it (trusted folders only)")
    parser.add_argument("--batch", type=int, default=1, help="batch size of the example input")
    parser.add_argument("--seq-len", type=int, default=128, help="sequence length for token models")
    parser.add_argument("--threads", type=int, default=1, help="threads for both latency measurements")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls before timing")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls (the median is reported)")
    parser.add_argument("--pretrained", action="store_true",
                        help="load pretrained weights (not needed for these figures; random init by default)")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX export and onnxruntime latency")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def measure(model, inputs, threads: int = 1, warmup: int = 3, repeats: int = 10, onnx: bool = True) -> dict:
    """All the figures for one model and example input; a failed ONNX export is reported, not raised.

    Args:
        model: the module (put in eval mode here).
        inputs: an example tensor, e.g. ``[B, 3, H, W]`` images or ``[B, T]`` token ids.
    """
    from ..errors import PrunekitError
    from ..metrics.latency import eager_latency, onnxruntime_latency
    from ..metrics.macs import macs_per_example
    from ..metrics.memory import peak_forward_memory
    from ..metrics.params import count_parameters

    model.eval()
    report = {
        "params": count_parameters(model),
        "macs": macs_per_example(model, inputs),  # per example, whatever the batch
        "peak_memory_mib": round(peak_forward_memory(model, inputs).peak_mib, 3),
        "eager_ms": eager_latency(model, inputs, warmup, repeats, threads).median_ms,
    }
    if onnx:
        try:
            report["onnxruntime_ms"] = onnxruntime_latency(model, inputs, warmup, repeats, threads).median_ms
        except (PrunekitError, ImportError, RuntimeError) as exc:
            report["onnxruntime_ms"] = f"failed: {str(exc).splitlines()[0][:200]}"
    return report


def run(args) -> int:
    import json

    from ..models import build, example_inputs, info

    from ._models import is_pruned_folder, load_pruned_folder

    name = args.model
    if is_pruned_folder(args.model):
        model, name, plan = load_pruned_folder(args.model, args.allow_factory)
        if name is None:
            from ..errors import ConfigError
            from ..prune.plan import make_inputs

            if plan.inputs is None:
                raise ConfigError(f"prunekit bench: {args.model}/plan.json describes no example inputs")
            inputs = make_inputs(plan.inputs)  # the shapes the plan was traced with
    else:
        info(args.model)  # unknown names raise UnknownNameError listing the known ones
        model = build(args.model, pretrained=args.pretrained).eval()
    if name is not None:
        inputs = example_inputs(name, batch=args.batch, seq_len=args.seq_len)
    report = {"model": args.model, "input_shape": list(inputs.shape), "threads": args.threads,
              **measure(model, inputs, args.threads, args.warmup, args.repeats, onnx=not args.no_onnx)}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"prunekit bench: {args.model}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in report.items():
        text = f"{value:,}" if isinstance(value, int) else f"{value:.4f}" if isinstance(value, float) else str(value)
        table.add_row("macs / example" if key == "macs" else key, text)
    Console().print(table)
    return 0
