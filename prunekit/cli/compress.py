"""`prunekit compress --data-free`: prune and quantise without data, compensating in closed form (UDFC-style).

    prunekit compress --data-free --keep 0.7 --bits 6 --model cifar_resnet56 --out runs/r56_udfc
    prunekit compress --data-free --bits 8 --model cifar_resnet20 --out runs/r20_int8     # quantization only

Writes the low-bit artifact (integers + per-channel scales in safetensors, ``compress.json``, ``plan.json``; see
`prunekit.quant.artifact`) or, without ``--bits``, the pruned float checkpoint, plus ``report.json``. Load it back
with ``prunekit.quant.load_quantized(DIR)`` (or ``prunekit.load(DIR)`` for a float checkpoint).
"""
from __future__ import annotations

COMMAND = "compress"
HELP = "data-free pruning + weight quantization with closed-form compensation (UDFC-style)"


def add_arguments(parser) -> None:
    parser.add_argument("--data-free", action="store_true", required=True,
                        help="required: compress from the weights and BatchNorm statistics alone")
    parser.add_argument("--model", required=True, help="registry name (prunekit ls models) or module:function")
    parser.add_argument("--keep", type=float, default=1.0, help="fraction of channels kept per group (default 1.0)")
    parser.add_argument("--bits", type=int, default=None, help="weight bits (2..8; default: float32)")
    parser.add_argument("--compensation", default="udfc", choices=["udfc", "neuron_merging", "none"],
                        help="closed form (default), Neuron Merging's rule, or none")
    parser.add_argument("--partners", default="all", choices=["all", "single"],
                        help="rebuild from all kept channels (default) or one partner each")
    parser.add_argument("--criterion", default="l1", help="criterion choosing the pruned channels (default l1)")
    parser.add_argument("--keep-uncompensable", action="store_true",
                        help="leave groups the closed form cannot compensate unpruned (default: prune and report)")
    parser.add_argument("--input-shape", default=None, help="example input shape, e.g. 1,3,32,32")
    parser.add_argument("--out", required=True, help="output folder")


def run(args) -> int:
    import json

    from rich.console import Console

    from ..compensate.udfc import UDFCConfig, compress
    from ..io import atomic_write_text
    from ._models import example_inputs_for, resolve_model

    console = Console()
    model, spec = resolve_model(args.model, allow_factory=True)  # typed on the command line
    inputs = example_inputs_for(args.model, model, args.input_shape, None)
    cfg = UDFCConfig(keep=args.keep, bits=args.bits, compensation=args.compensation, partners=args.partners,
                     criterion=args.criterion, prune_uncompensable=not args.keep_uncompensable)
    result = compress(model, inputs, cfg)
    if result.plan is not None:
        result.plan.model_spec = dict(spec)
    out = result.save(args.out, spec)
    atomic_write_text(out / "report.json", json.dumps(result.report, indent=2, default=str))
    rep = result.report
    console.print(f"removed {rep['removed_channels']} channels, compensated {len(rep['layers'])} layers, "
                  f"{rep['quantized_layers']} layers at {args.bits or 32} bits; bias-corrected "
                  f"{rep['bias_correction']['corrected']} layers")
    for gid, why in rep["uncompensated_pruned_groups"].items():
        console.print(f"[yellow]pruned without compensation[/yellow] {gid}: {why}")
    console.print(f"wrote {out}")
    return 0
