"""GCP: dynamic sparse training, group channel pruning, spatial attention distillation (paper 1).

Chu et al., "Group channel pruning and spatial attention distilling for object detection", Applied Intelligence
2022 (YOLOv4 on VOC). Three stages, each in its own resumable folder (see `prunekit.methods.base`):

1. **sparse** - training with the BN-L1 subgradient ``gamma.grad += s * sign(gamma)`` and the official code's
   variable rate (`gcp_variable`): s for the first 40% of training, then 0.01*s for the channels at or above the
   65th |gamma| percentile.
2. **prune** - group channel pruning: the channel groups the engine traced are split into *scopes* by feature-map
   scale and module structure (group tags ``scale`` and ``signature``, plus ``coupling``: ``residual`` for groups
   produced by several layers, ``single`` otherwise), or by a user's module-name pattern (`overrides`). Each scope
   has its own |gamma| threshold at its own ratio (`prunekit.allocate.scoped`). Scopes without an override take
   the budget ratio (searched so the pruned model keeps `keep_macs` of the MACs, or `keep_params` of the
   parameters) times a per-scope multiplier; the multipliers are found by a small coordinate search scoring each
   candidate (pruned to the same budget) by its training loss on a few hundred training images after re-estimating
   BN statistics (``ratio_search: loss``; ``none`` keeps them at 1). ``threshold: global`` is the paper's
   single-threshold baseline. Before removal the removed channels' constant output act(beta) is folded into the
   next layer (the code's ``update_activation``).
3. **finetune** - fine-tuning with the task loss plus spatial attention transfer from the sparse-trained (unpruned)
   model at the last layer of every feature-map scale.

Fidelity: reconstructed from the official code (`chumingqian/Model_Compression_For_YOLOV3-V4`) for any traced
image classifier or YOLO-style detector (`prunekit.methods.task`); the code's hand-set YOLOv4 groups and ratios
become scopes derived from the traced graph and a searched ratio per scope (the search is this library's, not the
paper's).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Dict, List, Tuple

from ..allocate.base import module_matches
from ..allocate.scoped import Scoped, ScopedConfig
from ..errors import ConfigError
from .base import PruneStageConfig, RecipeConfig, SparsePruneFinetuneRecipe, StageOutput, prune_with_folding
from .stages import FinetuneStageConfig, SparseStageConfig
from .task import need

SCOPE_TAG = "gcp_scope"
TAGS = ("scale", "signature", "coupling")


@dataclass
class GCPPruneConfig(PruneStageConfig):
    """Stage 2 of GCP.

    Attributes:
        threshold: ``group`` (one threshold per scope) or ``global`` (one |gamma| threshold over every group).
        scope_by: group tags forming the scopes, from ``scale``, ``signature``, ``coupling``.
        overrides: ``{module-name pattern: removal ratio}``; a group whose own layer matches a pattern forms that
            pattern's scope with this fixed ratio (first match wins); the other scopes share the searched ratio.
        relative: read `overrides` as multipliers of the searched ratio instead of fixed ratios.
        ratio_search: how the scopes without an override share the budget. ``none``: one common ratio (the
            MACs search scales it). ``loss``: per-scope multipliers of that ratio found by coordinate search - each
            scope's multiplier is tried times every factor in `search_factors`, every candidate is pruned to the
            same budget and scored by its training loss (cross-entropy, or the YOLOv8 loss for a detector) on
            `search_images` training images after re-estimating the BatchNorm statistics, and the best is kept
            (`search_passes` rounds). Paper 1 sets its per-group ratios by hand; this search is the library's
            stand-in [derived].
    """

    threshold: str = "group"
    scope_by: Tuple[str, ...] = ("scale", "signature", "coupling")
    overrides: Dict[str, float] = field(default_factory=dict)
    relative: bool = False
    ratio_search: str = "loss"
    search_images: int = 512
    search_factors: Tuple[float, ...] = (0.5, 1.5)
    search_passes: int = 1

    def __post_init__(self):
        super().__post_init__()
        s = self.SECTION
        self.scope_by = tuple(self.scope_by)
        need(self.threshold in ("group", "global"), s, f"threshold must be 'group' or 'global', got {self.threshold!r}")
        need(bool(self.scope_by) and all(t in TAGS for t in self.scope_by), s,
             f"scope_by must be a non-empty subset of {list(TAGS)}, got {list(self.scope_by)}")
        need(self.ratio_search in ("none", "loss"), s,
             f"ratio_search must be 'none' or 'loss', got {self.ratio_search!r}")
        need(self.search_images >= 1 and self.search_passes >= 0, s, "search_images must be >= 1, search_passes >= 0")
        self.search_factors = tuple(float(f) for f in self.search_factors)
        need(all(f > 0 for f in self.search_factors), s, f"search_factors must be > 0, got {self.search_factors}")
        limit = float("inf") if self.relative else 1.0
        for pattern, ratio in self.overrides.items():
            need(0.0 <= float(ratio) < limit, s, f"overrides['{pattern}'] must lie in [0, {limit}), got {ratio}")


@dataclass
class GCPConfig(RecipeConfig):
    """The GCP recipe: task plus three stages (see the module docstring)."""

    VERSION: ClassVar[int] = 1

    out_dir: str = "runs/gcp"
    stage1: SparseStageConfig = field(default_factory=SparseStageConfig)
    stage2: GCPPruneConfig = field(default_factory=GCPPruneConfig)
    stage3: FinetuneStageConfig = field(default_factory=FinetuneStageConfig)


def assign_scopes(groups, scope_by: Tuple[str, ...], overrides: Dict[str, float]) -> Dict[str, List[str]]:
    """Write each group's scope key into ``group.tags["gcp_scope"]``; returns scope -> group ids.

    The key is the first override pattern matching a layer whose own channels the group removes, else the tag
    values joined by ``"|"`` (``"2|Conv2d:k(3, 3):s(1, 1):gFalse|single"``). ``coupling`` is derived here:
    ``residual`` when several layers produce the group's channels (a residual stream), else ``single``.
    """
    scopes: Dict[str, List[str]] = {}
    for g in groups:
        producers = {m.module for m in g.members if m.role == "out"}
        g.tags["coupling"] = "residual" if len(producers) > 1 else "single"
        key = next((p for p in overrides if module_matches(g, [p])), None)
        if key is None:
            key = "|".join(str(g.tags.get(t, "?")) for t in scope_by)
        g.tags[SCOPE_TAG] = key
        if g.prunable:
            scopes.setdefault(key, []).append(g.id)
    return scopes


@dataclass
class GroupScopedConfig(ScopedConfig):
    """`ScopedConfig` plus `multipliers`: scope -> multiplier of the budget ratio (scopes without a fixed ratio)."""

    multipliers: Dict[str, float] = field(default_factory=dict)


class GroupScoped(Scoped):
    """Scoped allocation where `ratios` are the user's fixed (or relative) ratios and `multipliers` scale the
    searched budget ratio for the other scopes."""

    Config = GroupScopedConfig

    def scope_ratio(self, scope: str, budget_ratio: float) -> float:
        if scope not in self.config.ratios and scope in self.config.multipliers:
            return min(float(self.config.multipliers[scope]) * budget_ratio, 0.999)
        return super().scope_ratio(scope, budget_ratio)


def search_multipliers(candidate_loss: Callable[[Dict[str, float]], float], scopes: List[str],
                       factors: Tuple[float, ...], passes: int) -> Tuple[Dict[str, float], List[Dict]]:
    """Coordinate search of per-scope multipliers minimising `candidate_loss` (candidates the budget cannot reach
    are skipped). Returns (best multipliers, trace of every evaluation)."""
    best = {s: 1.0 for s in scopes}
    best_loss = candidate_loss(best)
    trace = [{"multipliers": dict(best), "loss": best_loss}]
    for _ in range(passes):
        for scope in scopes:
            for factor in factors:
                trial = {**best, scope: best[scope] * factor}
                try:
                    loss = candidate_loss(trial)
                except ConfigError:
                    continue
                trace.append({"multipliers": trial, "loss": loss})
                if loss < best_loss:
                    best_loss, best = loss, trial
    return best, trace


class GCPRecipe(SparsePruneFinetuneRecipe):
    """Paper 1 (GCP): dynamic sparse training, group channel pruning with bias folding, spatial attention
    distillation. Config: `GCPConfig`."""

    name = "gcp"
    Config = GCPConfig
    fidelity = "reconstructed (official code's rules; groups derived from the graph)"

    def prune(self, ctx) -> StageOutput:
        import prunekit

        cfg = self.config.stage2
        model = ctx.model("sparse")
        inputs = ctx.task.example_inputs()
        analysis = prunekit.analyze(model, inputs)
        criterion_options = {"reduction": "mean"}  # a residual group's score: mean |gamma| over its BatchNorms
        info = {"threshold": cfg.threshold}
        options = {}
        if cfg.threshold == "group":
            scopes = assign_scopes(analysis.groups, cfg.scope_by, cfg.overrides)
            base = {"by": (SCOPE_TAG,), "ratios": dict(cfg.overrides), "normalizer": "none",
                    "relative": cfg.relative, **cfg.constraints()}
            searched = [k for k in scopes if k not in cfg.overrides]
            multipliers = {k: 1.0 for k in searched}
            if cfg.ratio_search == "loss" and cfg.budget().target is not None and searched:
                def candidate_loss(mult: Dict[str, float]) -> float:
                    candidate = prune_with_folding(model, inputs, analysis, cfg, "bn_scale",
                                                   GroupScoped(None, **base, multipliers=mult), criterion_options)[0]
                    return ctx.task.search_loss(candidate, cfg.search_images)

                multipliers, trace = search_multipliers(candidate_loss, searched, cfg.search_factors,
                                                        cfg.search_passes)
                info["search"] = {"evaluations": len(trace), "loss_uniform": trace[0]["loss"],
                                  "loss_best": min(t["loss"] for t in trace)}
            allocator = GroupScoped(None, **base, multipliers=multipliers)
            info.update(scopes={k: len(v) for k, v in scopes.items()}, multipliers=multipliers)
        else:
            allocator, options = "global", {"normalizer": "none"}
        pruned, plan, facts = prune_with_folding(model, inputs, analysis, cfg, "bn_scale", allocator,
                                                 criterion_options, options, ctx.task.model_spec())
        info.update(facts, **ctx.task.score(pruned), **ctx.task.cost(pruned))
        return StageOutput(pruned, plan=plan, info=info)
