"""The recipe frame: a typed config, stages run in order in their own folders, resumable, and a JSON result.

A recipe (`Recipe` subclass) declares its config class and its stages. `run()` executes the stages in order, each in
``<out_dir>/<i>_<stage>/``:

- a finished stage leaves ``done.json`` (its fingerprint and facts) beside its output model (``model/``: weights, and
  the pruning plan once the model is pruned); a rerun skips it and later stages load its model from disk, so a
  straight run and a resumed run see the very same tensors;
- a stage that trains checkpoints into ``ckpt/`` and, when interrupted (or stopped by ``max_steps``), continues from
  its last checkpoint on the next run (`prunekit.train.loop` resumes exactly: weights, optimizer, data order, RNG);
- a stage's fingerprint hashes the task section and the sections of this and every earlier stage, minus run-control
  keys (``max_steps``, checkpoint frequency, device, threads, latency settings). A folder made with other settings
  is refused with every changed key named, or cleared when ``overwrite: true`` (`stage_folder.StageFolder`).

The result (accuracy, params, MACs, CPU latency of the final model, the original's figures, every stage's facts) is
returned and written atomically to ``<out_dir>/result.json``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..config import from_dict, load_config, to_dict
from ..errors import ConfigError
from ..io import atomic_write_text
from .stage_folder import StageFolder, settings_hash
from .task import RUN_CONTROL, ImageTask, TaskConfig, make_task, need, weights_digest

RESULT_FILE = "result.json"


@dataclass
class RecipeConfig:
    """Fields every recipe config has (subclasses add ``stage1``, ``stage2``, ``stage3`` sections).

    Attributes:
        out_dir: folder of the stage outputs and ``result.json``.
        seed: seed of every training stage.
        overwrite: clear stage folders made with other settings instead of refusing them.
        task: the model and data (`TaskConfig`).
    """

    VERSION: ClassVar[int] = 1

    out_dir: str = "runs/recipe"
    seed: int = 0
    overwrite: bool = False
    task: TaskConfig = field(default_factory=TaskConfig)

    def __post_init__(self):
        need(bool(str(self.out_dir).strip()), "config", "out_dir must not be empty")


@dataclass
class StageOutput:
    """What a stage hands back: its model (pruned or not), the plan that pruned it, facts, and whether it finished."""

    model: Optional[nn.Module]
    plan: Any = None
    info: Dict[str, Any] = field(default_factory=dict)
    complete: bool = True


@dataclass
class Stage:
    """One step of a recipe: `name`, the config `sections` it reads, and ``run(ctx) -> StageOutput``."""

    name: str
    sections: Sequence[str]
    run: Callable[["StageContext"], StageOutput]


@dataclass
class StageContext:
    """Passed to a stage: the recipe, the task, the stage folder, and access to earlier stages' models."""

    recipe: "Recipe"
    task: ImageTask
    folder: Path
    folders: Dict[str, Path]

    @property
    def config(self):
        return self.recipe.config

    def model(self, stage: str) -> nn.Module:
        """A fresh copy of a finished earlier stage's model, read from its folder."""
        if stage not in self.folders:
            raise ConfigError(f"recipe {self.recipe.name}: stage '{stage}' has not run before this one")
        return load_stage_model(self.folders[stage] / "model", self.task)

    def plan(self, stage: str):
        """The pruning plan saved by a finished earlier stage (None when its model is unpruned)."""
        from ..prune.plan import PruningPlan

        path = self.folders[stage] / "model" / "plan.json"
        return PruningPlan.load(path) if path.exists() else None


def save_stage_model(folder: Path, model: nn.Module, plan: Any = None) -> None:
    """Write ``folder/model.safetensors`` (plus ``plan.json`` when pruned); no pickle."""
    import prunekit
    from ..io import save_tensors

    folder.mkdir(parents=True, exist_ok=True)
    if plan is not None:
        prunekit.save(model.cpu(), plan, folder)
    else:
        save_tensors(folder / "model.safetensors", model.cpu().state_dict())


def load_stage_model(folder: Path, task: ImageTask) -> nn.Module:
    """Rebuild a stage's model: the task's architecture, the saved plan replayed if any, the saved weights."""
    import prunekit
    from ..io import load_state_dict_strict, load_tensors

    fresh = task.architecture()
    if (folder / "plan.json").exists():
        return prunekit.load(folder, model=fresh).eval()
    load_state_dict_strict(fresh, load_tensors(folder / "model.safetensors"), str(folder / "model.safetensors"))
    return fresh.eval()


def _section_dict(value: Any) -> Any:
    """A config section as fingerprinted: run-control keys left out, and fields marked
    ``metadata={"fingerprint": "unless-default"}`` left out while at their default (fields added later then keep
    the fingerprints of folders made before them)."""
    if dataclasses.is_dataclass(value):
        out = {}
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if f.name in RUN_CONTROL:
                continue
            if f.metadata.get("fingerprint") == "unless-default" and v == _default(f):
                continue
            out[f.name] = _section_dict(v)
        return out
    if isinstance(value, dict):
        return {k: _section_dict(v) for k, v in value.items() if k not in RUN_CONTROL}
    if isinstance(value, (list, tuple)):
        return type(value)(_section_dict(v) for v in value)
    return value


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING


@contextlib.contextmanager
def _threads(n: Optional[int]) -> Iterator[None]:
    previous = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class Recipe:
    """Base class of the seed papers' recipes: a typed config, ordered stages, `run()`.

    Subclasses set `name`, `Config` (a `RecipeConfig` subclass), `fidelity` and implement `stages()`.

    Args:
        config: a `Config` instance, a dict of sections, or None (defaults).
        **overrides: top-level config fields replaced on the way in.
    """

    name: ClassVar[str] = "recipe"
    Config: ClassVar[type] = RecipeConfig
    fidelity: ClassVar[str] = "reconstructed"

    def __init__(self, config: Any = None, **overrides: Any):
        if config is None:
            config = self.Config()
        elif isinstance(config, dict):
            config = from_dict(self.Config, config)
        elif not isinstance(config, self.Config):
            raise ConfigError(f"recipe {self.name}: config must be a {self.Config.__name__} or a dict, got "
                              f"{type(config).__name__}")
        self.config = dataclasses.replace(config, **overrides) if overrides else config

    @classmethod
    def from_file(cls, path: Optional[str] = None, overrides: Sequence[str] = ()) -> "Recipe":
        """Build from a YAML/TOML file plus ``section.key=value`` overrides."""
        return cls(load_config(cls.Config, path, overrides))

    def stages(self) -> List[Stage]:
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------------- running
    def fingerprint(self, upto: int) -> str:
        """Hash of `fingerprint_settings(upto)`."""
        return settings_hash(self.fingerprint_settings(upto))

    def fingerprint_settings(self, upto: int) -> Dict[str, Any]:
        """The task section plus the sections of stages 0..`upto`, without run-control keys (JSON-ready)."""
        stages = self.stages()
        sections = ["task"] + [s for stage in stages[:upto + 1] for s in stage.sections]
        data = {"recipe": self.name, "version": self.Config.VERSION, "seed": self.config.seed,
                **{s: _section_dict(getattr(self.config, s)) for s in sections}}
        if self.config.task.weights is not None:  # the starting weights' content, not just their path
            data["weights_digest"] = self._weights_digest()
        return json.loads(json.dumps(data, sort_keys=True, default=str))

    def _start(self) -> Tuple[Path, float]:
        """Create ``out_dir``; returns it and the start time that `_write` turns into the result's ``seconds``."""
        out = Path(self.config.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        return out, time.perf_counter()

    def _result_head(self, out: Path, status: str, **fields: Any) -> Dict[str, Any]:
        """The keys every result starts with (recipe, version, fidelity, status, out_dir, config), then `fields`."""
        return {"recipe": self.name, "version": self.Config.VERSION, "fidelity": self.fidelity, "status": status,
                "out_dir": str(out), "config": to_dict(self.config), **fields}

    def run(self) -> Dict[str, Any]:
        """Run (or resume) every stage; returns the result dict also written to ``<out_dir>/result.json``."""
        out, started = self._start()
        with _threads(self.config.task.num_threads):
            task = make_task(self.config.task, self.config.seed)
            result = self._result_head(out, "running", original=self._original(task, out), stages={})
            stages = self.stages()
            folders: Dict[str, Path] = {}
            for i, stage in enumerate(stages):
                folder = out / f"{i + 1}_{stage.name}"
                marker = StageFolder(folder, stage.name, self.fingerprint_settings(i), self.name,
                                     self.config.overwrite)
                info = marker.finished()
                if info is None:
                    marker.claim([out / f"{j + 1}_{s.name}" for j, s in enumerate(stages) if j > i])
                    t0 = time.perf_counter()
                    output = stage.run(StageContext(self, task, folder, dict(folders)))
                    info = {**output.info, "seconds": round(time.perf_counter() - t0, 2)}
                    if not output.complete:
                        result["stages"][stage.name] = info
                        result.update(status="incomplete", stopped_in=stage.name)
                        return self._write(out, result, started)
                    save_stage_model(folder / "model", output.model, output.plan)
                    marker.mark_done(info)
                folders[stage.name] = folder
                result["stages"][stage.name] = info
            final = load_stage_model(folders[stages[-1].name] / "model", task)
            last = result["stages"][stages[-1].name]
            scores = {k: last[k] for k in task.score_keys if k in last}
            if task.metric not in scores:
                scores = task.score(final)
            metrics = {**scores, **task.cost(final), "latency_ms": task.latency_ms(final)}
            base = result["original"]
            result.update(status="complete", metric=task.metric, model_dir=str(folders[stages[-1].name] / "model"),
                          **metrics, macs_keep=metrics["macs"] / base["macs"],
                          params_keep=metrics["params"] / base["params"])
        return self._write(out, result, started)

    def _weights_digest(self) -> str:
        path = self.config.task.weights
        cached = getattr(self, "_digest", None)
        if cached is None or cached[0] != path:
            self._digest = (path, weights_digest(path))
        return self._digest[1]

    def _write(self, out: Path, result: Dict[str, Any], started: float) -> Dict[str, Any]:
        result["seconds"] = round(time.perf_counter() - started, 2)
        atomic_write_text(out / RESULT_FILE, json.dumps(result, indent=2, default=str))
        return result

    def _original(self, task: ImageTask, out: Path) -> Dict[str, Any]:
        """Params / MACs of the unpruned model, plus its metric and latency with ``task.eval_original`` (cached)."""
        key = self.fingerprint(-1) + str(self.config.task.eval_original)
        path = out / "original.json"
        if path.exists():
            cached = json.loads(path.read_text())
            if cached.get("key") == key:
                return cached["metrics"]
        metrics = self._original_metrics(task, task.build())
        atomic_write_text(path, json.dumps({"key": key, "metrics": metrics}, indent=2))
        return metrics

    def _original_metrics(self, task: ImageTask, model: nn.Module) -> Dict[str, Any]:
        """What `_original` records of the unpruned model (a recipe with other metrics overrides this)."""
        return task.measure(model) if self.config.task.eval_original else task.cost(model)


class SparsePruneFinetuneRecipe(Recipe):
    """The three stages both seed papers share: sparse training (section ``stage1``), pruning by scaling factor
    (``stage2``, the recipe's `prune`), fine-tuning with distillation from the sparse model (``stage3``)."""

    def stages(self) -> List[Stage]:
        from .stages import finetune_stage, sparse_train_stage

        return [Stage("sparse", ("stage1",), lambda ctx: sparse_train_stage(ctx, self.config.stage1)),
                Stage("prune", ("stage2",), self.prune),
                Stage("finetune", ("stage3",), lambda ctx: finetune_stage(ctx, self.config.stage3))]

    def prune(self, ctx: StageContext) -> StageOutput:
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------- shared pruning step


@dataclass
class PruneStageConfig:
    """Stage 2 settings shared by the recipes (scaling-factor pruning with bias folding).

    Attributes:
        keep_macs: keep this fraction of the MACs (the allocation's ratio is searched to within 0.5%); null: use
            `keep_params` or `ratio` instead.
        keep_params: keep this fraction of the parameters instead (set `keep_macs` to null).
        ratio: fraction of the channels to remove when both are null.
        ignore: module-name glob patterns left unpruned.
        max_ratio: at most this fraction of any group's channels goes (keeps layers from emptying).
        min_keep_channels: every group keeps at least this many channels (null: 1).
        fold_bias: before removal, zero the removed channels' BN scales and fold their constant output act(beta)
            into the consumers' bias (or the next BN's running mean), as paper 1's code does.
    """

    SECTION: ClassVar[str] = "stage2"

    keep_macs: Optional[float] = 0.5
    keep_params: Optional[float] = None
    ratio: float = 0.5
    ignore: Tuple[str, ...] = ()
    max_ratio: Optional[float] = 0.9
    min_keep_channels: Optional[int] = None
    fold_bias: bool = True

    def __post_init__(self):
        s = self.SECTION
        need(self.keep_macs is None or 0.0 < self.keep_macs < 1.0, s,
             f"keep_macs must lie in (0, 1) or be null, got {self.keep_macs}")
        need(self.keep_params is None or 0.0 < self.keep_params < 1.0, s,
             f"keep_params must lie in (0, 1) or be null, got {self.keep_params}")
        need(self.keep_params is None or self.keep_macs is None, s,
             "keep_macs and keep_params are two budgets: set keep_macs: null to use keep_params")
        need(0.0 < self.ratio < 1.0, s, f"ratio must lie in (0, 1), got {self.ratio}")
        need(self.max_ratio is None or 0.0 < self.max_ratio <= 1.0, s, f"max_ratio must lie in (0, 1], got "
             f"{self.max_ratio}")
        need(self.min_keep_channels is None or self.min_keep_channels >= 1, s,
             f"min_keep_channels must be >= 1 or null, got {self.min_keep_channels}")
        self.ignore = tuple(self.ignore)

    def budget(self):
        """The engine `Budget` these settings describe."""
        from ..graph.types import Budget

        if self.keep_macs is not None:
            return Budget(target="macs", keep_fraction=self.keep_macs, ignore=self.ignore)
        if self.keep_params is not None:
            return Budget(target="params", keep_fraction=self.keep_params, ignore=self.ignore)
        return Budget(ratio=self.ratio, ignore=self.ignore)

    def constraints(self) -> Dict[str, Any]:
        """Allocator options shared by every policy."""
        out: Dict[str, Any] = {}
        if self.max_ratio is not None:
            out["max_ratio"] = self.max_ratio
        if self.min_keep_channels is not None:
            out["min_keep_channels"] = self.min_keep_channels
        return out


def zero_bn_scales(model: nn.Module, groups, removed: Dict[str, torch.Tensor]) -> int:
    """Set the BN scale (gamma) of every removed channel to 0 in place, so it outputs the constant beta.

    Returns:
        the number of gamma entries zeroed.
    """
    from ..importance.bn_scale import is_bn_scale

    by_id = {g.id: g for g in groups}
    count = 0
    with torch.no_grad():
        for gid, idx in removed.items():
            if len(idx) == 0:
                continue
            for m in by_id[gid].members:
                if is_bn_scale(model, m):
                    positions = m.positions(torch.as_tensor(idx, dtype=torch.long))
                    model.get_submodule(m.module).weight.index_fill_(m.dim, positions, 0.0)
                    count += int(positions.numel())
    return count


def plan_to_budget(model: nn.Module, inputs: torch.Tensor, analysis, criterion: str, allocator: Any, budget,
                   criterion_options: Optional[Dict] = None, allocator_options: Optional[Dict] = None,
                   model_spec: Optional[Dict] = None, tol: float = 0.005):
    """`prunekit.plan` for data-free criteria with a tighter budget tolerance (default 0.5% instead of 2%), so
    arms compared "at equal MACs" land within 1% of each other.

    Runs the public planning steps (`prunekit.planning`): eligibility, scoring, allocation under the budget,
    selection. `allocator` is a registry name (built with `allocator_options`) or an `Allocator` instance.

    Returns:
        a `PruningPlan` (its provenance records the `PlanConfig`; an instance allocator is named by its class).
    """
    from ..planning import PlanConfig, allocate, eligibility, make_plan, scoring, selection

    options = dict(allocator_options or {}) if isinstance(allocator, str) else {}
    constraints = {k: options.pop(k) for k in ("round_to", "max_ratio", "min_keep_channels") if k in options}
    config = PlanConfig.from_dict({"criterion": {"name": criterion, **(criterion_options or {})},
                                   "allocator": {"name": allocator if isinstance(allocator, str) else "uniform",
                                                 **options},
                                   "budget": dataclasses.asdict(budget), "constraints": constraints,
                                   "tolerance": tol})
    if config.criterion.requires():
        raise ConfigError(f"plan_to_budget: criterion '{criterion}' needs {sorted(config.criterion.requires())}; "
                          f"only data-free criteria (bn_scale, l1, l2...) are supported here")
    groups = eligibility(analysis, config)
    scores = scoring(model, groups, config, inputs)
    policy = None if isinstance(allocator, str) else allocator
    allocation = allocate(model, groups, scores, config, inputs, policy=policy, max_evaluations=80)
    removed = selection(groups, scores, allocation)
    extra = {} if policy is None else {"allocator": type(allocator).__name__}
    return make_plan(model, analysis, removed, allocation, config, inputs, model_spec, **extra)


def prune_with_folding(model: nn.Module, inputs: torch.Tensor, analysis, cfg: PruneStageConfig, criterion: str,
                       allocator: Any, criterion_options: Optional[Dict] = None,
                       allocator_options: Optional[Dict] = None, model_spec: Optional[Dict] = None):
    """Plan by scaling factor, fold the removed channels' constants (``cfg.fold_bias``), remove them physically.

    Args:
        model: the sparse-trained model (not modified).
        inputs: example inputs [B, C, H, W] for tracing, folding and verification.
        analysis: `prunekit.analyze(model, inputs)` (its group tags may carry the recipe's scopes).
        cfg: budget and constraints. criterion / allocator (+ options): registry names (or an `Allocator`
            instance carrying its own constraints).

    Returns:
        (pruned model, plan, facts dict).
    """
    import copy

    import prunekit
    from ..compensate.bias_fold import fold_removed_channels

    options = {**cfg.constraints(), **(allocator_options or {})} if isinstance(allocator, str) else None
    plan = plan_to_budget(model, inputs, analysis, criterion, allocator, cfg.budget(), criterion_options, options,
                          model_spec)
    work = copy.deepcopy(model).eval()
    removed = plan.removed_tensors()
    info: Dict[str, Any] = {"removed_channels": int(sum(len(v) for v in removed.values())),
                            "groups_pruned": int(sum(1 for v in removed.values() if len(v))),
                            "search_ratio": plan.provenance.get("ratio")}
    if cfg.fold_bias:
        info["zeroed_gammas"] = zero_bn_scales(work, analysis.groups, removed)
        report = fold_removed_channels(work, analysis.groups, removed, inputs)
        info["folded_into"] = len(report["folded"])
        info["fold_skipped"] = report["skipped"] + report["varying"]
    pruned = prunekit.apply(work, plan, inputs, analysis=analysis)
    return pruned.eval(), plan, info
