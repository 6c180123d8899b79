"""`prunekit prune`: prune a model, verify it, and write the checkpoint, the plan and a report."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..errors import ConfigError
from ..planning.config import PlanConfig

COMMAND = "prune"
HELP = "prune a model (registry name, module:function, or Hugging Face folder) and write checkpoint + plan + report"


# Command-line shortcuts folded into the ``plan`` section (`fold_shortcuts`); ``--set plan.<key>=...`` reaches the
# rest of `prunekit.planning.PlanConfig`.
SHORTCUTS = ("ratio", "keep_macs", "keep_params", "budget", "runtime", "criterion", "allocator", "data",
             "calibration_batches", "round_to", "max_ratio", "ignore", "allow_inexact", "strict")


@dataclass
class PruneConfig:
    """`prunekit prune` settings: the model, its example inputs, the output, and the whole `PlanConfig` (``plan``).

    The flags from ``--ratio`` to ``--strict`` are shortcuts into ``plan`` (``--criterion taylor`` is
    ``--set plan.criterion.name=taylor``); after reading they are folded into it and left None here.
    """

    model: str = field(default="digits_cnn", metadata={"help": "registry name, module:function, or HF folder"})
    ratio: Optional[float] = field(default=None, metadata={"help": "fraction of units to remove, in (0, 1) "
                                                                   "(plan.budget.ratio, default 0.5)"})
    keep_macs: Optional[float] = field(default=None, metadata={"help": "instead of ratio: keep this MACs fraction"})
    keep_params: Optional[float] = field(default=None, metadata={"help": "instead of ratio: keep this params fraction"})
    budget: Optional[str] = field(default=None, metadata={"help": "TARGET:FRACTION kept, TARGET one of macs, params, "
                                                                  "latency (e.g. latency:0.5); or a ratio"})
    runtime: Optional[str] = field(default=None, metadata={"help": "runtime a latency budget is measured on: eager, "
                                                                   "eager-bnfold, onnxruntime, cuda"})
    criterion: Optional[str] = field(default=None, metadata={"help": "importance criterion (prunekit ls criteria; "
                                                                     "default l1)"})
    allocator: Optional[str] = field(default=None, metadata={"help": "allocation policy (prunekit ls allocators; "
                                                                     "default uniform)"})
    data: Optional[str] = field(default=None, metadata={"help": "calibration dataset for criteria that need "
                                                                "activations or gradients (prunekit ls datasets)"})
    calibration_batches: Optional[int] = field(default=None, metadata={"help": "calibration batches (default 4)"})
    round_to: Optional[str] = field(default=None, metadata={"help": "kept widths are multiples of this; 'auto': the "
                                                                    "hardware's channel block (16 on AVX-512)"})
    max_ratio: Optional[float] = field(default=None, metadata={"help": "remove at most this fraction per group"})
    ignore: Optional[List[str]] = field(default=None, metadata={"help": "module name patterns to leave alone"})
    allow_inexact: Optional[bool] = field(default=None, metadata={"help": "also prune LayerNorm'd channels "
                                                                          "(not exact)"})
    strict: Optional[bool] = field(default=None, metadata={"help": "fail on operations the engine does not know"})
    input_shape: Optional[str] = field(default=None, metadata={"help": "example input shape, e.g. 1,3,32,32"})
    tokens: Optional[str] = field(default=None, metadata={"help": "example token batch shape, e.g. 2,16"})
    tolerance: float = field(default=1e-4, metadata={"help": "verification tolerance (relative)"})
    latency: bool = field(default=True, metadata={"help": "measure latency before and after"})
    sensitivity: bool = field(default=False, metadata={"help": "measure per-group sensitivity curves on held-out "
                                                                 "data for report.html (cached; as prunekit analyze "
                                                                 "--sensitivity); without it cached curves are shown"})
    out: str = field(default="prunekit-out", metadata={"help": "output folder"})
    plan: PlanConfig = field(default_factory=PlanConfig)

    def __post_init__(self):
        given = [k for k in SHORTCUTS if getattr(self, k) is not None]
        if given:  # built in Python with shortcuts: fold them like the command line does
            folded = fold_shortcuts({k: getattr(self, k) for k in given}, self.plan.to_dict())
            for key in given:
                setattr(self, key, None)
            self.plan = PlanConfig.from_dict(folded, prefix="plan")


def fold_shortcuts(data: Dict[str, Any], plan: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Move the shortcut keys of `data` into the nested plan mapping; returns the plan mapping.

    Raises:
        ConfigError: two budgets at once (``ratio`` / ``keep_macs`` / ``keep_params`` / ``budget``), or a
            malformed ``budget`` string.
    """
    plan = dict(plan or {})
    section = lambda key: dict(plan.get(key) or {})  # noqa: E731
    budgets = [k for k in ("ratio", "keep_macs", "keep_params", "budget") if data.get(k) is not None]
    if len(budgets) > 1:
        raise ConfigError(f"config keys {budgets} are all budgets; give one")
    budget = section("budget")
    if budgets:
        key, value = budgets[0], data[budgets[0]]
        if key == "budget":
            text = str(value).strip()
            target, sep, fraction = text.partition(":")
            if not sep:
                target, fraction = None, text
            try:
                amount = float(fraction)
            except ValueError:
                raise ConfigError(f"config key 'budget': expected TARGET:FRACTION (e.g. latency:0.5, macs:0.5) or "
                                  f"a ratio, got {value!r}") from None
            key, value = ("ratio", amount) if target in (None, "ratio") else (target.strip(), amount)
        if key == "ratio":
            budget.update(target=None, ratio=value)
        else:
            budget.update(target=key.replace("keep_", ""), keep_fraction=value)
    if data.get("runtime") is not None:
        budget["runtime"] = data["runtime"]
    if budget:
        plan["budget"] = budget
    for key, where, sub in (("criterion", "criterion", "name"), ("allocator", "allocator", "name"),
                            ("data", "calibration", "data"), ("calibration_batches", "calibration", "batches"),
                            ("round_to", "constraints", "round_to"), ("max_ratio", "constraints", "max_ratio")):
        if data.get(key) is not None:
            node = section(where) if not isinstance(plan.get(where), str) else {"name": plan[where]}
            if key in ("criterion", "allocator") and node.get("name") not in (None, data[key]):
                node = {}  # another plugin: its options do not carry over
            node[sub] = data[key]
            plan[where] = node
    for key in ("ignore", "allow_inexact", "strict"):
        if data.get(key) is not None:
            plan[key] = data[key]
    return plan


def add_arguments(parser) -> None:
    from ..config import add_config_args

    add_config_args(parser, PruneConfig)


def config_from_args(args) -> PruneConfig:
    """The `PruneConfig` of the command line: ``--config`` file, then the flags, then ``--set`` overrides (shortcut
    keys at any of these levels are folded into ``plan``)."""
    from ..config import apply_overrides, from_dict, read_config_file

    data: Dict[str, Any] = read_config_file(args.config) if getattr(args, "config", None) else {}
    data = _folded(data)
    flags = {key[5:]: value for key, value in vars(args).items() if key.startswith("cfg__") and value is not None}
    data = _folded({**data, **flags})
    data = _folded(apply_overrides(data, getattr(args, "overrides", [])))
    return from_dict(PruneConfig, data)


def _folded(data: Dict[str, Any]) -> Dict[str, Any]:
    data = dict(data)
    shortcuts = {k: data.pop(k) for k in SHORTCUTS if k in data}
    if shortcuts:
        plan = data.get("plan") or {}
        if not isinstance(plan, dict):
            raise ConfigError(f"config key 'plan' is a section (PlanConfig), not a value; got {plan!r}")
        data["plan"] = fold_shortcuts(shortcuts, plan)
    return data


def run(args) -> int:
    return prune_to_folder(config_from_args(args), allow_factory=model_typed_on_command_line(args))


def model_typed_on_command_line(args) -> Optional[str]:
    """The ``model`` value the user typed in this command line (``--model`` or ``--set model=``), else None.

    Only such a value may name a ``module:function`` factory: a ``--config`` file is data that may come from anyone.
    """
    typed = getattr(args, "cfg__model", None)
    for item in getattr(args, "overrides", None) or ():
        key, sep, raw = item.partition("=")
        if sep and key.strip() == "model":
            typed = raw.strip()
    return None if typed is None else str(typed)


def prune_to_folder(cfg: PruneConfig, allow_factory: Optional[str] = None) -> int:
    """Prune `cfg.model` into `cfg.out`; a ``module:function`` model is imported only when it equals `allow_factory`.
    """
    import prunekit
    from rich.console import Console

    from ..planning import analyse
    from ..prune.report import build_report
    from ._models import example_inputs_for, resolve_model

    console = Console()
    from ..export import check_destination

    check_destination(cfg.out)  # a bad --out is refused before the work, not after it
    plan_cfg = cfg.plan
    plan_cfg.check_calibration(plan_cfg.calibration.data is not None)  # before loading anything
    typed = allow_factory is not None and cfg.model == allow_factory
    model, spec = resolve_model(cfg.model, allow_factory=typed)
    inputs = example_inputs_for(cfg.model, model, cfg.input_shape, cfg.tokens)
    calibration, loss_fn = None, None
    if plan_cfg.calibration.data is not None and plan_cfg.criterion.requires():
        from ..planning.calibration import calibration_data

        with console.status(f"reading calibration data ({plan_cfg.calibration.data})"):
            calibration, loss_fn = calibration_data(cfg.model, plan_cfg.calibration)
    with console.status("tracing the model"):
        analysis = analyse(model, inputs, strict=plan_cfg.strict)
    console.print(f"{len(analysis.groups)} channel groups, {len(analysis.prunable())} prunable")
    curves = None
    if cfg.sensitivity:  # before planning: the 'sensitivity' criterion reads these curves from the cache
        from .analyze import sensitivity_for

        curves = sensitivity_for(cfg.model, model, inputs, analysis, data=plan_cfg.calibration.data)
    with console.status("planning"):
        plan = prunekit.plan(model, inputs, plan_cfg, model_spec=spec, analysis=analysis, calibration=calibration,
                             loss_fn=loss_fn)
    _note_budget_miss(plan, plan_cfg, console)
    if getattr(plan, "refusal_summary", None) is not None:  # groups pruned / refused by reason (graph.summary)
        console.print(plan.refusal_summary.text())
    with console.status("removing channels and verifying"):
        pruned = prunekit.apply(model, plan, inputs, analysis=analysis, tolerance=cfg.tolerance)
    report = build_report(model, pruned, inputs, analysis, latency=cfg.latency)
    page = _html_report(cfg, model, pruned, inputs, report, plan, curves)
    prunekit.save(pruned, plan, cfg.out, extra=lambda folder: (report.write(folder),  # one atomic folder:
                                                                 page.write(Path(folder) / "report.html")))
    report.print(f"prunekit prune {cfg.model}")
    _warn_if_nothing_removed(plan, console)
    if (Path(cfg.out) / "hf").is_dir():
        console.print(f"Hugging Face folder: {cfg.out}/hf (prunekit.export.load_pretrained; plain from_pretrained "
                      f"too when the widths are uniform)")
    console.print(f"wrote {cfg.out}/ (model.safetensors, plan.json, report.json, report.md, report.html, "
                  f"widths.png)")
    return 0


def _html_report(cfg: PruneConfig, model, pruned, inputs, report, plan, curves=None):
    """report.html: the report's tables, latency per runtime, and sensitivity curves (`curves`, else this model's
    cached ones)."""
    from ..metrics.sanity import nothing_removed_message
    from ..planning.sensitivity import latest_cached
    from ..report import prune_report
    from ..report.latency import runtime_latencies

    latency = runtime_latencies(model, pruned, inputs, (report.before.latency_ms, report.after.latency_ms)) \
        if cfg.latency else {}
    warning = nothing_removed_message(plan)
    return prune_report(report, f"prunekit prune {cfg.model}", latency=latency,
                        sensitivity=curves if curves is not None else latest_cached(model),
                        warnings=[warning] if warning else [])


def _warn_if_nothing_removed(plan, console) -> None:
    from ..metrics.sanity import nothing_removed_message

    message = nothing_removed_message(plan)
    if message:
        console.print(f"[bold yellow]warning:[/] {message}")


def _note_budget_miss(plan, plan_cfg: PlanConfig, console) -> None:
    """Say so when the budget search ended outside its tolerance (a policy that moves many groups at once)."""
    prov = plan.provenance
    cost, target = prov.get("cost"), prov.get("target_cost")
    if not cost or not target or target != target:  # no target (ratio budget), or NaN
        return
    miss = cost / target - 1.0
    if abs(miss) > plan_cfg.tolerance:
        console.print(f"[yellow]note:[/] the plan keeps {cost / prov['base_cost']:.3f} of the {prov['budget']} "
                      f"(target {plan_cfg.budget.keep_fraction}, {miss:+.1%}): the '{plan_cfg.allocator.name}' "
                      f"allocator moves many groups at once; 'global' or 'cost_rank' get closer")
