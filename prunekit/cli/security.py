"""`prunekit security simulate`: MACPruning against a simulated correlation power analysis of the first layer.

    prunekit security simulate --model digits_cnn --keep-prob 0.5 --top-q 0.25 --plot cpa.png
    prunekit security simulate --model cifar_resnet20 --rows 16 --max-traces 5000 --seeds 0,1,2

Builds the model (a model without stored weights, such as ``digits_cnn``, is trained first on its dataset), ranks the
input pixels by input-gradient saliency (or occlusion) on training data, then for each activation map prints the
traces a CPA needs to recover a first-layer weight without the defence, with it, and with the realigning
counter-attack, and writes the correlation against the number of traces as a plot.
"""
from __future__ import annotations

COMMAND = "security"
HELP = "side-channel experiments: prunekit security simulate (MACPruning vs a simulated CPA)"


def _floats(text: str):
    return tuple(float(v) for v in text.split(",") if v.strip())


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sim = sub.add_parser("simulate", help="traces needed by a CPA with and without MACPruning")
    sim.add_argument("--model", default="digits_cnn", help="registry model (its first layer is attacked)")
    sim.add_argument("--weights", default=None, help="state dict (.safetensors or torch file) to load")
    sim.add_argument("--train-epochs", type=int, default=15, help="epochs for a model without stored weights")
    sim.add_argument("--keep-prob", default="0.5", help="comma-separated keep probabilities p")
    sim.add_argument("--top-q", default="0,0.25", help="comma-separated always-on fractions (0 = random map)")
    sim.add_argument("--importance", default="saliency", choices=("saliency", "occlusion"))
    sim.add_argument("--importance-images", type=int, default=512, help="training images for the importance map")
    sim.add_argument("--sigma", type=float, default=1.0, help="leakage noise standard deviation")
    sim.add_argument("--max-traces", type=int, default=5000, help="traces per attack (the cap)")
    sim.add_argument("--attacks", type=int, default=4, help="attacks per seed (success-rate denominator)")
    sim.add_argument("--success-rate", type=float, default=0.75)
    sim.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds")
    sim.add_argument("--rows", default=None, help="output rows simulated (comma-separated; default all)")
    sim.add_argument("--plot", default="security_cpa.png", help="PNG of correlation against traces")
    sim.add_argument("--json", default=None, help="also write the table as JSON")


def run(args) -> int:
    if getattr(args, "action", None) != "simulate":
        print("usage: prunekit security simulate [options]   (see --help)")
        return 2
    import json

    import torch
    from rich.console import Console
    from rich.table import Table

    from ..dynamic.pixel_mask import PixelActivationMap, PixelMaskConfig, first_layer
    from ..errors import ConfigError
    from ..io import atomic_write_text
    from ..security.setup import load_classifier, importance_for
    from ..security.simulate import SimulationConfig, plot_curves, traces_table

    console = Console(width=150)  # the table's labels must not wrap
    model, train_set, meta = load_classifier(args.model, args.weights, args.train_epochs)
    example = torch.zeros(1, *meta.input_shape)
    conv = model.get_submodule(first_layer(model, example))
    if not isinstance(conv, torch.nn.Conv2d):
        raise ConfigError(f"security simulate: the first layer of {args.model} is not a Conv2d")
    hw = tuple(meta.input_shape[1:])
    importance = importance_for(model, train_set, args.importance, args.importance_images)
    maps = {}
    for q in _floats(args.top_q):
        for p in _floats(args.keep_prob):
            label = f"{'random' if q == 0 else f'importance q={q:g}'}, p={p:g}"
            maps[label] = PixelActivationMap(PixelMaskConfig(keep_prob=p, top_q=q), hw, importance)
    rows_arg = tuple(int(v) for v in args.rows.split(",")) if args.rows else None
    cfg = SimulationConfig(sigma=args.sigma, max_traces=args.max_traces, attacks=args.attacks,
                           success_rate=args.success_rate, seeds=tuple(int(s) for s in args.seeds.split(",")),
                           rows=rows_arg)
    console.print(f"attacking {args.model} layer '{first_layer(model, example)}' ({len(cfg.seeds)} seeds x "
                  f"{cfg.attacks} attacks, up to {cfg.max_traces} traces, noise sigma {cfg.sigma})")
    rows, first = traces_table(conv, hw, maps, cfg)
    table = Table(title=f"traces for rank-1 recovery at {cfg.success_rate:.0%} success (median over seeds); "
                        f"target {rows[0]['target'] if rows else ''}")
    for col in ("map", "undefended", "defended", "ratio", "realigned (knows skipped MACs)", "theory R"):
        table.add_column(col, justify="left" if col == "map" else "right")
    for r in rows:
        defended = f"> {cfg.max_traces}" if r["ratio_is_lower_bound"] else f"{r['defended']:.0f}"
        ratio = f"{'>= ' if r['ratio_is_lower_bound'] else ''}{r['ratio']:.1f}x"
        table.add_row(r["map"], f"{r['undefended']:.0f}", defended, ratio, f"{r['realigned']:.0f}",
                      f"{r['theoretical_ratio']:.0f}x")
    console.print(table)
    plot_curves(first, args.plot, f"{args.model}: {next(iter(maps))}")
    console.print(f"wrote {args.plot}")
    if args.json:
        atomic_write_text(args.json, json.dumps({"rows": rows, "config": cfg.__dict__}, indent=2, default=str))
    return 0
