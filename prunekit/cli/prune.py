"""`prunekit prune`: prune a model, verify it, and write the checkpoint, the plan and a report."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from ..errors import ConfigError

COMMAND = "prune"
HELP = "prune a model (registry name, module:function, or Hugging Face folder) and write checkpoint + plan + report"


@dataclass
class PruneConfig:
    model: str = field(default="digits_cnn", metadata={"help": "registry name, module:function, or HF folder"})
    ratio: float = field(default=0.5, metadata={"help": "fraction of units to remove, in (0, 1)"})
    keep_macs: Optional[float] = field(default=None, metadata={"help": "instead of ratio: keep this MACs fraction"})
    keep_params: Optional[float] = field(default=None, metadata={"help": "instead of ratio: keep this params fraction"})
    criterion: str = field(default="l1", metadata={"help": "importance criterion (prunekit ls criteria)"})
    allocator: str = field(default="uniform", metadata={"help": "allocation policy (prunekit ls allocators)"})
    round_to: Optional[str] = field(default=None, metadata={"help": "kept widths are multiples of this; 'auto': the "
                                                                    "hardware's channel block (16 on AVX-512)"})
    max_ratio: Optional[float] = field(default=None, metadata={"help": "remove at most this fraction per group"})
    ignore: List[str] = field(default_factory=list, metadata={"help": "module name patterns to leave alone"})
    allow_inexact: bool = field(default=False, metadata={"help": "also prune LayerNorm'd channels (not exact)"})
    strict: bool = field(default=False, metadata={"help": "fail on operations the engine does not know"})
    input_shape: Optional[str] = field(default=None, metadata={"help": "example input shape, e.g. 1,3,32,32"})
    tokens: Optional[str] = field(default=None, metadata={"help": "example token batch shape, e.g. 2,16"})
    tolerance: float = field(default=1e-4, metadata={"help": "verification tolerance (relative)"})
    latency: bool = field(default=True, metadata={"help": "measure latency before and after"})
    out: str = field(default="prunekit-out", metadata={"help": "output folder"})

    def __post_init__(self):
        if not 0.0 < self.ratio < 1.0:
            raise ConfigError(f"ratio must lie in (0, 1), got {self.ratio}")
        for name in ("keep_macs", "keep_params"):
            v = getattr(self, name)
            if v is not None and not 0.0 < v < 1.0:
                raise ConfigError(f"{name} must lie in (0, 1), got {v}")
        from ..allocate.hardware import resolve_round_to

        resolve_round_to(self.round_to)  # raises ConfigError on a bad value


def add_arguments(parser) -> None:
    from ..config import add_config_args

    add_config_args(parser, PruneConfig)


def run(args) -> int:
    from ..config import config_from_args

    cfg = config_from_args(PruneConfig, args)
    return prune_to_folder(cfg)


def prune_to_folder(cfg: PruneConfig) -> int:
    import prunekit
    from rich.console import Console

    from ..graph.types import Budget
    from ..prune.report import build_report
    from ._models import example_inputs_for, resolve_model

    console = Console()
    model, spec = resolve_model(cfg.model)
    inputs = example_inputs_for(cfg.model, model, cfg.input_shape, cfg.tokens)
    with console.status("tracing the model"):
        analysis = prunekit.analyze(model, inputs, strict=cfg.strict)
    console.print(f"{len(analysis.groups)} channel groups, {len(analysis.prunable())} prunable")
    budget = None
    if cfg.keep_macs is not None:
        budget = Budget(target="macs", keep_fraction=cfg.keep_macs, ignore=tuple(cfg.ignore))
    elif cfg.keep_params is not None:
        budget = Budget(target="params", keep_fraction=cfg.keep_params, ignore=tuple(cfg.ignore))
    with console.status("planning"):
        plan = prunekit.plan(model, inputs, ratio=cfg.ratio, criterion=cfg.criterion, allocator=cfg.allocator,
                             budget=budget, allow_inexact=cfg.allow_inexact, round_to=cfg.round_to,
                             max_ratio=cfg.max_ratio, ignore=cfg.ignore, model_spec=spec, analysis=analysis)
    with console.status("removing channels and verifying"):
        pruned = prunekit.apply(model, plan, inputs, analysis=analysis, tolerance=cfg.tolerance)
    report = build_report(model, pruned, inputs, analysis, latency=cfg.latency)
    prunekit.save(pruned, plan, cfg.out)
    if "hf_folder" in spec or hasattr(pruned, "save_pretrained"):
        _save_hf(pruned, cfg.out, console)
    report.write(cfg.out)
    report.print(f"prunekit prune {cfg.model}")
    console.print(f"wrote {cfg.out}/ (model.safetensors, plan.json, report.json, report.md, widths.png)")
    return 0


def _save_hf(model, out: str, console) -> None:
    if getattr(model.config, "prunekit_nonuniform", None):
        console.print("layers were pruned non-uniformly: the Hugging Face config cannot describe them; "
                      "reload with prunekit.load")
        return
    try:
        model.save_pretrained(f"{out}/hf", safe_serialization=True)
        console.print(f"Hugging Face folder: {out}/hf (loads with from_pretrained)")
    except Exception as exc:  # saving the HF folder is a convenience; the plan-based checkpoint is authoritative
        console.print(f"could not write a Hugging Face folder: {exc}")
