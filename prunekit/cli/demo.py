"""`prunekit demo`: the whole story in under two minutes on a laptop CPU, with no data files.

Train a small CNN on scikit-learn digits, prune it to half its MACs with the engine (verified), fine-tune briefly,
and print a before/after table; with ``--model cifar_resnet56 --data cifar10`` the same on the pretrained
ResNet-56 and real CIFAR-10.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..errors import ConfigError

COMMAND = "demo"
HELP = "train, prune to half the MACs, fine-tune and report (digits by default; --model/--data for CIFAR-10)"


@dataclass
class DemoConfig:
    model: str = field(default="digits_cnn", metadata={"help": "registry model"})
    data: str = field(default="digits", metadata={"help": "registry dataset"})
    keep_macs: float = field(default=0.5, metadata={"help": "fraction of MACs to keep"})
    criterion: str = field(default="l1", metadata={"help": "importance criterion"})
    allocator: str = field(default="uniform", metadata={"help": "allocation policy"})
    train_epochs: int = field(default=15, metadata={"help": "initial training epochs (models without weights)"})
    finetune_epochs: int = field(default=5, metadata={"help": "fine-tuning epochs after pruning"})
    train_limit: Optional[int] = field(default=None, metadata={"help": "training images used (None: all)"})
    eval_limit: Optional[int] = field(default=None, metadata={"help": "test images used (None: all)"})
    lr: float = field(default=0.05, metadata={"help": "learning rate"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    out: Optional[str] = field(default=None, metadata={"help": "output folder (default: $PRUNEKIT_CACHE/demo, "
                                                               "i.e. ~/.cache/prunekit/demo: never the current "
                                                               "folder, which may be a repository)"})

    def __post_init__(self):
        if not 0.0 < self.keep_macs < 1.0:
            raise ConfigError(f"keep_macs must lie in (0, 1), got {self.keep_macs}")


_CIFAR_DEFAULTS = {"train_epochs": 0, "finetune_epochs": 1, "train_limit": 10000, "eval_limit": 2000, "lr": 0.01}


def add_arguments(parser) -> None:
    from ..config import add_config_args

    add_config_args(parser, DemoConfig)


def run(args) -> int:
    from ..config import config_from_args

    cfg = config_from_args(DemoConfig, args)
    if cfg.data != "digits":  # sensible defaults for a pretrained model on real data, unless given
        for k, v in _CIFAR_DEFAULTS.items():
            if getattr(args, f"cfg__{k}", None) is None and not any(o.startswith(k + "=") for o in args.overrides):
                setattr(cfg, k, v)
    return run_demo(cfg)


def _datasets(cfg: DemoConfig, mean, std):
    from .. import data

    norm = (tuple(mean), tuple(std)) if mean is not None else None
    if cfg.data == "digits":
        return data.load("digits", "train"), data.load("digits", "test")
    train = data.load(cfg.data, "train", augment=True, normalize=norm, limit=cfg.train_limit)
    test = data.load(cfg.data, "test", normalize=norm, limit=cfg.eval_limit)
    return train, test


def run_demo(cfg: DemoConfig) -> int:
    import time

    import torch
    from rich.console import Console

    import prunekit

    from ..metrics.accuracy import evaluate_accuracy
    from ..models import build, example_inputs, info
    from ..prune.report import build_report
    from ..train.loop import TrainConfig, train

    console = Console()
    started = time.perf_counter()
    from ..export import check_destination
    from ..paths import cache_root

    out = cfg.out or str(cache_root() / "demo")
    check_destination(out)  # refused before the training, not after it
    torch.manual_seed(cfg.seed)
    meta = info(cfg.model)
    model = build(cfg.model, pretrained=True)
    train_set, test_set = _datasets(cfg, meta.mean if cfg.data != "digits" else None, meta.std)
    fit = lambda m, epochs, lr: train(m, train_set, TrainConfig(  # noqa: E731
        epochs=epochs, lr=lr, batch_size=64 if cfg.data == "digits" else 128, seed=cfg.seed, progress=True,
        weight_decay=5e-4, device="cpu"))
    if cfg.train_epochs > 0:
        console.print(f"[bold]1. training {cfg.model} on {cfg.data}[/] ({cfg.train_epochs} epochs)")
        fit(model, cfg.train_epochs, cfg.lr)
    model.eval()
    acc_before = evaluate_accuracy(model, test_set)
    x = example_inputs(cfg.model, batch=1)
    console.print(f"[bold]2. pruning to {cfg.keep_macs:.0%} of the MACs[/] (criterion {cfg.criterion}, "
                  f"allocator {cfg.allocator})")
    analysis = prunekit.analyze(model, x)
    plan = prunekit.plan(model, x, budget=prunekit.Budget(target="macs", keep_fraction=cfg.keep_macs),
                         criterion=cfg.criterion, allocator=cfg.allocator, analysis=analysis,
                         model_spec={"registry": cfg.model})
    pruned = prunekit.apply(model, plan, x, analysis=analysis)
    acc_pruned = evaluate_accuracy(pruned, test_set)
    classes = int(pruned(x).shape[-1])
    console.print(f"[bold]3. fine-tuning[/] ({cfg.finetune_epochs} epochs)")
    if cfg.finetune_epochs > 0:
        fit(pruned, cfg.finetune_epochs, cfg.lr * (0.5 if cfg.data == "digits" else 1.0))
    pruned.eval()
    acc_after = evaluate_accuracy(pruned, test_set)
    report = build_report(model, pruned, example_inputs(cfg.model, batch=32), analysis)
    report.before.accuracy, report.after.accuracy = acc_before, acc_after
    prunekit.save(pruned, plan, out, extra=report.write)
    report.print(f"prunekit demo: {cfg.model} on {cfg.data}")
    console.print(f"accuracy right after pruning (before fine-tuning): {acc_pruned:.4f}")
    from ..metrics.sanity import at_chance_message, nothing_removed_message

    for message in (nothing_removed_message(plan), at_chance_message(acc_pruned, classes, "one-shot accuracy"),
                    at_chance_message(acc_after, classes, "accuracy after fine-tuning")):
        if message:
            console.print(f"[bold yellow]warning:[/] {message}")
    console.print(f"wrote {out}/ (model.safetensors, plan.json, report.json, report.md, widths.png) "
                  f"in {time.perf_counter() - started:.0f} s")
    return 0
