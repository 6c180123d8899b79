"""PAGCP rounds: sweep and prune with a multitask loss oracle, fine-tune, sweep the pruned model again (paper 2).

Ye et al., "Performance-aware Approximation of Global Channel Pruning for Multitask CNNs", TPAMI 2023. The
allocator (`prunekit.allocate.pagcp.Pagcp`) sweeps the engine's channel groups one after another and stops each at
the largest ratio of a grid where every task's held-out loss stays within its (decaying) tolerance. This recipe runs
the paper's iterative rounds on a classifier, each stage in its own resumable folder (`prunekit.methods.base`):

0. **train** (only when ``train.steps > 0``) - joint training on the summed task losses, e.g. to train a second head
   that starts untrained (the two-head ``cifar_resnet*_multihead`` models).
1. **prune1** - the PAGCP sweep on the model (tasks: `prune.tasks`, held-out batches: `prune.held_out_images`
   images from the end of the test split, disjoint from the `task.test_limit` ones evaluated), then the removal
   of every channel the oracle passed, or, with `prune.keep_macs`, the cheapest-loss-per-MAC part of them that
   keeps that fraction of the original MACs (all of them when the target is out of reach). The sweep log (per
   unit: ratio, the task that stopped it, losses) is written to ``pagcp_log.json`` in the stage folder (with its
   plot ``pagcp_sweep.png``: ratio and binding task per unit), into the plan's provenance and into the result.
2. **finetune1** - `finetune.steps` SGD steps (cosine decay) on the summed task losses.
3. **prune2**, **finetune2**, ... up to `rounds`. A round whose model already meets `prune.keep_macs` keeps it.

Every pruning round's plan is composed with the earlier ones into one plan against the original model
(`prunekit.prune.iterative.compose`), so each stage's model reloads from its folder like any pruned model.

Tasks are named losses on a batch ``(images, class labels, vehicle labels)``: ``class`` (cross-entropy of the
class logits: the output itself, or the first output of a multi-head model) and ``vehicle`` (cross-entropy of the
second output against CIFAR-10's vehicle / animal split). ``tasks: null`` takes every task the model's output has
(one output: ``class``; two: ``class`` and ``vehicle``).

Fidelity: the paper's sweep and product tolerance condition (see `prunekit.allocate.pagcp`), with the library's
fine-tuning between rounds.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..io import atomic_write_text
from .base import Recipe, RecipeConfig, Stage, StageContext, StageOutput
from .task import TaskConfig, need

LOG_FILE = "pagcp_log.json"
PLOT_FILE = "pagcp_sweep.png"


# --------------------------------------------------------------------------------------------------- task losses


def _head(output: Any, index: int) -> torch.Tensor:
    """Logits [B, C] of head `index` (a single-output model has only head 0)."""
    if isinstance(output, (tuple, list)):
        if index >= len(output):
            raise ConfigError(f"pagcp: task needs output {index} of the model, which has {len(output)} outputs")
        return output[index]
    if index:
        raise ConfigError(f"pagcp: task needs output {index} but the model has a single output")
    return output


@dataclass(frozen=True)
class TaskHead:
    """A named task: which model output it reads and which label of the batch it predicts."""

    output: int
    label: int  # 1: class labels, 2: vehicle / animal labels

    def loss(self, output: Any, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(_head(output, self.output), batch[self.label])

    def hits(self, output: Any, batch: Sequence[torch.Tensor]) -> int:
        return int((_head(output, self.output).argmax(1) == batch[self.label]).sum())


TASK_HEADS: Dict[str, TaskHead] = {"class": TaskHead(0, 1), "vehicle": TaskHead(1, 2)}


def make_batch(items: Sequence[Any]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images [B, 3, H, W], class labels [B], vehicle labels [B]) from ``(image, label)`` items."""
    from ..models.cifar_multihead import two_task_batch

    return two_task_batch(torch.stack([it[0] for it in items]), torch.tensor([int(it[1]) for it in items]))


def default_tasks(model: nn.Module, example: torch.Tensor) -> Tuple[str, ...]:
    """Every task the model's output has: ``class`` for one output, ``class`` and ``vehicle`` for two."""
    with torch.no_grad():
        output = model.eval()(example)
    n = len(output) if isinstance(output, (tuple, list)) else 1
    names = tuple(TASK_HEADS)[:n]
    if n > len(TASK_HEADS):
        raise ConfigError(f"pagcp: the model has {n} outputs; name its tasks in prune.tasks (known: "
                          f"{list(TASK_HEADS)})")
    return names


# --------------------------------------------------------------------------------------------------- config


@dataclass
class PagcpTrainConfig:
    """Joint training before the first round (section ``train``; ``steps: 0`` leaves the stage out).

    Attributes:
        steps: SGD steps of `task.batch_size` training images.
        lr / momentum / weight_decay: SGD (Nesterov, cosine decay to 0).
    """

    SECTION: ClassVar[str] = "train"

    steps: int = 0
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4

    def __post_init__(self):
        s = self.SECTION
        need(self.steps >= 0, s, f"steps must be >= 0, got {self.steps}")
        need(self.lr > 0 and 0 <= self.momentum < 1 and self.weight_decay >= 0, s,
             "needs lr > 0, momentum in [0, 1) and weight_decay >= 0")


@dataclass
class PagcpFinetuneConfig(PagcpTrainConfig):
    """Fine-tuning after each pruning round (section ``finetune``)."""

    SECTION: ClassVar[str] = "finetune"

    steps: int = 50


@dataclass
class PagcpPruneConfig:
    """Each round's sweep (section ``prune``; the allocator's options: `prunekit.allocate.pagcp.PagcpConfig`).

    Attributes:
        tasks: task names from ``class``, ``vehicle`` (null: every task the model's output has).
        tolerance: delta_0, the first unit's allowed relative loss increase per task.
        allowance: allowed product of per-unit loss ratios over one sweep (> 1 + tolerance).
        ratio_min / ratio_max / ratio_steps: the ratio grid.
        probe_ratio: units are ordered by the MACs that removing this fraction saves.
        topk: fraction of pruned units kept by the loss-per-MAC filter.
        criterion: channel saliency re-scored in the sweep.
        keep_macs: stop pruning at this fraction of the original MACs (null: every removal the oracle passes).
        held_out_images: test images the oracle evaluates (the last ones of the split; they must not overlap the
            first `task.test_limit` ones the accuracies are measured on).
        held_out_batch: images per held-out batch.
        progress: progress bar over units x ratios.
    """

    SECTION: ClassVar[str] = "prune"

    tasks: Optional[Tuple[str, ...]] = None
    tolerance: float = 0.2
    allowance: float = 20.0
    ratio_min: float = 0.05
    ratio_max: float = 0.95
    ratio_steps: int = 19
    probe_ratio: float = 0.3
    topk: float = 1.0
    criterion: str = "l1"
    keep_macs: Optional[float] = 0.5
    held_out_images: int = 128
    held_out_batch: int = 64
    progress: bool = True

    def __post_init__(self):
        from ..allocate.pagcp import PagcpConfig

        s = self.SECTION
        if self.tasks is not None:
            self.tasks = tuple(self.tasks)
            need(bool(self.tasks) and all(t in TASK_HEADS for t in self.tasks) and len(set(self.tasks)) ==
                 len(self.tasks), s, f"tasks must be distinct names from {list(TASK_HEADS)}, got {list(self.tasks)}")
        need(self.keep_macs is None or 0 < self.keep_macs < 1, s, f"keep_macs must lie in (0, 1), got {self.keep_macs}")
        need(self.held_out_images >= 1 and self.held_out_batch >= 1, s,
             "held_out_images and held_out_batch must be >= 1")
        try:
            PagcpConfig(**self.allocator_options())
        except ConfigError as exc:
            raise ConfigError(f"{s}: {exc}") from None

    def allocator_options(self) -> Dict[str, Any]:
        keys = ("tolerance", "allowance", "ratio_min", "ratio_max", "ratio_steps", "probe_ratio", "topk",
                "criterion", "progress")
        return {k: getattr(self, k) for k in keys}


@dataclass
class PagcpRoundsConfig:
    """How many prune + fine-tune rounds (section ``rounds``)."""

    SECTION: ClassVar[str] = "rounds"

    count: int = 3

    def __post_init__(self):
        need(self.count >= 1, self.SECTION, f"count must be >= 1, got {self.count}")


@dataclass
class PagcpRecipeConfig(RecipeConfig):
    """The pagcp recipe (see the module docstring)."""

    VERSION: ClassVar[int] = 1

    out_dir: str = "runs/pagcp"
    task: TaskConfig = field(default_factory=lambda: TaskConfig(model="cifar_resnet20_multihead"))
    train: PagcpTrainConfig = field(default_factory=PagcpTrainConfig)
    rounds: PagcpRoundsConfig = field(default_factory=PagcpRoundsConfig)
    prune: PagcpPruneConfig = field(default_factory=PagcpPruneConfig)
    finetune: PagcpFinetuneConfig = field(default_factory=PagcpFinetuneConfig)


# --------------------------------------------------------------------------------------------------- recipe


class PagcpRecipe(Recipe):
    """Paper 2 (PAGCP): rounds of multitask-oracle channel pruning and fine-tuning. Config: `PagcpRecipeConfig`."""

    name = "pagcp"
    Config = PagcpRecipeConfig
    fidelity = "paper's sweep and tolerance condition; iterative rounds with the library's fine-tuning"

    def stages(self) -> List[Stage]:
        out: List[Stage] = []
        if self.config.train.steps > 0:
            out.append(Stage("train", ("train",), self._train))
        for r in range(1, self.config.rounds.count + 1):
            out.append(Stage(f"prune{r}", ("rounds", "prune"), lambda ctx, r=r: self._prune(ctx, r)))
            out.append(Stage(f"finetune{r}", ("finetune",), lambda ctx, r=r: self._finetune(ctx, r)))
        return out

    def fingerprint_settings(self, upto: int) -> Dict[str, Any]:
        """The base settings plus the stage's name: rounds read the same sections, yet each is its own stage."""
        data = super().fingerprint_settings(upto)
        if upto >= 0:
            data["stage"] = self.stages()[upto].name
        return data

    def run(self) -> Dict[str, Any]:
        """`Recipe.run`, plus every task's accuracy (``accuracy_<task>``) of the final model in the result."""
        from .base import RESULT_FILE

        from ..models import info
        from .task import registry_name

        kind = info(registry_name(self.config.task.model)).task
        if kind != "classification":
            raise ConfigError(f"recipe pagcp: task.model '{self.config.task.model}' is a {kind} model; the recipe "
                              f"runs on image classifiers (single- or multi-head) so far")
        result = super().run()
        if result["status"] == "complete":
            last = result["stages"][self.stages()[-1].name]
            result.update({k: v for k, v in last.items() if k.startswith("accuracy_")})
            atomic_write_text(Path(result["out_dir"]) / RESULT_FILE, json.dumps(result, indent=2, default=str))
        return result

    def _original_metrics(self, task, model: nn.Module) -> Dict[str, Any]:
        """Params / MACs of the unpruned model, plus (``task.eval_original``) every task's accuracy and latency."""
        metrics = task.cost(model)
        if self.config.task.eval_original:
            metrics.update(self._scores(task, model), latency_ms=task.latency_ms(model))
        return metrics

    # ------------------------------------------------------------------------------------------------ helpers
    def _tasks(self, task, model: nn.Module) -> Dict[str, Callable]:
        names = self.config.prune.tasks or default_tasks(model, task.example_inputs(1))
        return {n: TASK_HEADS[n].loss for n in names}

    def _previous(self, r: int, kind: str) -> Optional[str]:
        """Name of the stage before this one (None for the first stage)."""
        names = [s.name for s in self.stages()]
        i = names.index(f"{kind}{r}")
        return names[i - 1] if i else None

    def _input_model(self, ctx: StageContext, previous: Optional[str]) -> nn.Module:
        return ctx.task.build() if previous is None else ctx.model(previous)

    def _scores(self, task, model: nn.Module) -> Dict[str, float]:
        """Accuracy of every task on the test items (``accuracy`` is the class task's), in [0, 1]."""
        names = self.config.prune.tasks or default_tasks(model, task.example_inputs(1))
        hits, n, data = dict.fromkeys(names, 0), 0, task.test_set
        model.eval()
        with torch.no_grad():
            for start in range(0, len(data), task.cfg.eval_batch_size):
                batch = make_batch([data[i] for i in range(start, min(start + task.cfg.eval_batch_size, len(data)))])
                output = model(batch[0])
                for name in names:
                    hits[name] += TASK_HEADS[name].hits(output, batch)
                n += len(batch[0])
        out = {f"accuracy_{k}": v / max(n, 1) for k, v in hits.items()}
        if "class" in hits:
            out["accuracy"] = out["accuracy_class"]
        return out

    def _held_out(self, task) -> List[tuple]:
        """`prune.held_out_images` images from the end of the test split, in batches, disjoint from the first
        `task.test_limit` ones the accuracies are measured on.

        Not the training split: a pretrained trunk saw every training image (its losses there are memorised), and
        CIFAR-10's training split is stored by class, so its last images are all trucks (an oracle that only ever
        saw one class and one vehicle label).
        """
        from ..data import load

        cfg = self.config.prune
        data = load(task.cfg.dataset, split="test", normalize=task.normalize, **task.cfg.dataset_args)
        evaluated = len(data) if task.cfg.test_limit is None else min(task.cfg.test_limit, len(data))
        if evaluated + cfg.held_out_images > len(data):
            raise ConfigError(f"prune: held_out_images ({cfg.held_out_images}) overlap the {evaluated} test images "
                              f"task.test_limit evaluates in the {len(data)}-image test split of "
                              f"'{task.cfg.dataset}'; lower task.test_limit or prune.held_out_images")
        index = list(range(len(data) - cfg.held_out_images, len(data)))
        return [make_batch([data[i] for i in index[k:k + cfg.held_out_batch]])
                for k in range(0, len(index), cfg.held_out_batch)]

    def _fit(self, ctx: StageContext, model: nn.Module, cfg: PagcpTrainConfig, salt: int) -> Dict[str, Any]:
        """`cfg.steps` SGD steps on the summed task losses over seeded training batches; returns facts."""
        tasks = self._tasks(ctx.task, model)
        data, batch = ctx.task.train_set, ctx.task.cfg.batch_size
        gen = torch.Generator().manual_seed(self.config.seed * 1000 + salt)
        torch.manual_seed(self.config.seed * 1000 + salt)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                              nesterov=cfg.momentum > 0)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(cfg.steps, 1))
        model.train()
        order, pos, loss = torch.randperm(len(data), generator=gen), 0, torch.zeros(())
        from rich.progress import Progress

        with Progress(transient=True, disable=not self.config.prune.progress) as bar:
            job = bar.add_task(f"pagcp {ctx.folder.name}", total=cfg.steps)
            for _ in range(cfg.steps):
                if pos + batch > len(order):
                    order, pos = torch.randperm(len(data), generator=gen), 0
                items = make_batch([data[int(i)] for i in order[pos:pos + batch]])
                pos += batch
                output = model(items[0])
                loss = sum(fn(output, items) for fn in tasks.values())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.advance(job)
        model.eval()
        return {"steps": cfg.steps, "final_loss": float(loss.detach()) if cfg.steps else None}

    # ------------------------------------------------------------------------------------------------ stages
    def _train(self, ctx: StageContext) -> StageOutput:
        model = ctx.task.build()
        info = self._fit(ctx, model, self.config.train, salt=0)
        return StageOutput(model, info={**info, **self._scores(ctx.task, model)})

    def _finetune(self, ctx: StageContext, r: int) -> StageOutput:
        prune_stage = f"prune{r}"
        model = ctx.model(prune_stage)
        info = self._fit(ctx, model, self.config.finetune, salt=r)
        info.update(self._scores(ctx.task, model), **ctx.task.cost(model))
        return StageOutput(model, plan=ctx.plan(prune_stage), info=info)

    def _prune(self, ctx: StageContext, r: int) -> StageOutput:
        from ..metrics.macs import count_macs

        cfg, task = self.config.prune, ctx.task
        previous = self._previous(r, "prune")
        model = self._input_model(ctx, previous)
        before = ctx.plan(previous) if previous is not None else None
        example = task.example_inputs(1)
        base = count_macs(task.build(), example)
        current = count_macs(model, example)
        keep = None if cfg.keep_macs is None else cfg.keep_macs * base / current
        if keep is not None and keep >= 0.99:  # the target is met: this round keeps the model
            info = {"round": r, "skipped": "keep_macs reached", "macs_kept": current / base}
            return StageOutput(model, plan=before, info={**info, **self._scores(task, model), **task.cost(model)})
        held = self._held_out(task)
        tasks = self._tasks(task, model)
        losses_before = _losses(model, tasks, held)
        pruned, step, log = _pagcp_step(model, tasks, held, example, cfg, keep)
        plan = _composed(task, model, before, step)
        atomic_write_text(ctx.folder / LOG_FILE, json.dumps(log, indent=2, default=str))
        if log.get("swept"):
            from ..allocate.pagcp_plot import plot_sweep

            plot_sweep({f"round {r}": log}, ctx.folder / PLOT_FILE, base_macs=current)
        losses_after = _losses(pruned, tasks, held)
        macs = count_macs(pruned, example)
        info = {"round": r, "macs_kept": macs / base, "channels_removed": sum(len(v) for v in step.removed.values()),
                "held_out_loss_before": losses_before, "held_out_loss_after": losses_after,
                "loss_ratio": {k: losses_after[k] / losses_before[k] for k in tasks}, "pagcp_log": log}
        info.update(self._scores(task, pruned), **task.cost(pruned))
        return StageOutput(pruned, plan=plan, info=info)


# --------------------------------------------------------------------------------------------------- pruning step


@torch.no_grad()
def _losses(model: nn.Module, tasks: Dict[str, Callable], held: List[tuple]) -> Dict[str, float]:
    """Mean held-out loss of every task."""
    model.eval()
    outs = [(model(b[0]), b) for b in held]
    return {name: sum(float(fn(o, b)) for o, b in outs) / len(outs) for name, fn in tasks.items()}


def _pagcp_step(model: nn.Module, tasks: Dict[str, Callable], held: List[tuple], example: torch.Tensor,
                cfg: PagcpPruneConfig, keep: Optional[float]):
    """One sweep and the removal: (pruned model, the step's plan against `model`, the sweep log).

    With `keep`, the cheapest-loss-per-MAC part of the passed removals keeping `keep` of `model`'s MACs; when the
    passed removals cannot reach it, all of them (the log says so)."""
    import prunekit
    from .. import planning
    from ..allocate.pagcp import Pagcp
    from ..graph.types import Budget
    from ..planning.cost import macs_cost

    options = cfg.allocator_options()
    analysis = planning.analyse(model, example)
    note = None
    budgets = ([Budget(target="macs", keep_fraction=keep)] if keep is not None else []) + [Budget(ratio=0.999)]
    policy = groups = scores = None
    for budget in budgets:
        config = planning.PlanConfig(criterion=cfg.criterion, allocator={"name": "pagcp", **options}, budget=budget)
        if policy is None:  # one sweep: the fallback budget reuses it (the policy keeps its result)
            groups = planning.eligibility(analysis, config)
            scores = planning.scoring(model, groups, config, example)
            policy = Pagcp(**options).attach(model, tasks, held, cost=macs_cost(model, groups, example))
        try:
            allocation = planning.allocate(model, groups, scores, config, example, policy=policy)
        except ConfigError as exc:  # the oracle's safe removals do not reach the MACs target
            note = f"keep_macs out of reach this round ({exc}); every removal the oracle passed is applied"
            continue
        removed = planning.selection(groups, policy.sweep_scores(scores), allocation)
        log = {**policy.provenance(), "budget": budget.target or "ratio", "note": note}
        plan = planning.make_plan(model, analysis, removed, allocation, config, example, pagcp=log)
        return prunekit.apply(model, plan, example), plan, log
    raise ConfigError("prune: PAGCP found no allocation")  # unreachable: the ratio budget always allocates


def _composed(task, model: nn.Module, before, step):
    """`step` (made on `model`) composed with `before` (the plan that made `model`, or None) into one plan against
    the original architecture."""
    from ..prune.iterative import compose
    from ..prune.plan import PruningPlan

    first = before or step
    sizes = dict(first.group_sizes)
    gone = {gid: set(idx) for gid, idx in before.removed.items()} if before else {}
    kept = {gid: [i for i in range(n) if i not in gone.get(gid, ())] for gid, n in sizes.items()}
    compose(sizes, kept, step)
    removed = {gid: sorted(set(range(sizes[gid])) - set(kept[gid])) for gid in sizes}
    provenance = dict(step.provenance)
    provenance["rounds_composed"] = int((before.provenance or {}).get("rounds_composed", 1)) + 1 if before else 1
    return PruningPlan(model_fingerprint=first.model_fingerprint, removed={g: r for g, r in removed.items() if r},
                       group_sizes=sizes, inputs=first.inputs, model_spec=task.model_spec(), provenance=provenance)
