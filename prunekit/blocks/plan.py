"""`BlockPlan`: which blocks of which weights are removed, as pure data; masking, replay, save/load, conversion.

A block plan is stored as a `prunekit.prune.plan.PruningPlan` (the library's JSON hand-off): ``removed`` maps each
target weight's parameter name to its removed flat block ids (see `prunekit.blocks.layout`), ``group_sizes`` to its
block count, and ``provenance`` records ``unit="block"``, the block shape and each weight's shape. Weights are saved
as safetensors beside it; nothing is pickled.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from ..errors import ConfigError
from ..io import load_state_dict_strict, load_tensors, save_tensors
from ..prune.plan import PruningPlan, model_fingerprint
from .layout import BlockShape, BlockTarget, element_mask, parameter, targets_for
from .module import BlockSparseLinear

PLAN_FILE, WEIGHTS_FILE = "block_plan.json", "model.safetensors"


@dataclass
class BlockPlan:
    """Removed blocks per target weight.

    Attributes:
        block: the block shape.
        removed: param name -> sorted flat block ids removed.
        shapes: param name -> ``[out, in]``.
        provenance: how the plan was made (method, budget, scores...).
    """

    block: BlockShape
    removed: Dict[str, List[int]]
    shapes: Dict[str, List[int]]
    provenance: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_counts(cls, targets: List[BlockTarget], orders: Dict[str, torch.Tensor], counts: Dict[str, int],
                    **provenance: Any) -> "BlockPlan":
        """Remove the first ``counts[p]`` blocks of ``orders[p]`` from each target p."""
        block = targets[0].block
        removed = {t.param: sorted(int(i) for i in orders[t.param][:counts[t.param]]) for t in targets}
        return cls(block, removed, {t.param: list(t.shape) for t in targets}, dict(provenance))

    def targets(self, model: nn.Module, dense_only: bool = False) -> List[BlockTarget]:
        """The plan's targets in `model`; with `dense_only`, those not already converted to `BlockSparseLinear`."""
        names = list(self.removed)
        if dense_only:
            names = [p for p in names if not isinstance(_owner(model, p), BlockSparseLinear)]
        return targets_for(model, self.block, names) if names else []

    def keep_grid(self, target: BlockTarget) -> torch.Tensor:
        """``[R, C]`` bool, True for kept blocks."""
        rows, cols = target.grid
        keep = torch.ones(rows * cols, dtype=torch.bool)
        keep[torch.tensor(self.removed[target.param], dtype=torch.long)] = False
        return keep.view(rows, cols)

    def fraction_removed(self) -> float:
        """Removed weights over all target weights."""
        numel = self.block.rows * self.block.cols
        total = sum(s[0] * s[1] for s in self.shapes.values())
        return sum(len(v) for v in self.removed.values()) * numel / max(total, 1)

    def per_layer(self) -> Dict[str, float]:
        """param -> fraction of its blocks removed."""
        numel = self.block.rows * self.block.cols
        return {p: len(v) * numel / (self.shapes[p][0] * self.shapes[p][1]) for p, v in self.removed.items()}

    # ------------------------------------------------------------------------------------------- applying

    def apply(self, model: nn.Module) -> nn.Module:
        """Zero the removed blocks of `model`'s weights in place (the masked dense model). Returns `model`.

        Layers already converted to `BlockSparseLinear` hold only their kept blocks and are left alone.
        """
        with torch.no_grad():
            for t in self.targets(model, dense_only=True):
                if tuple(self.shapes[t.param]) != t.shape:
                    raise ConfigError(f"prunekit.blocks: plan expects '{t.param}' of shape {self.shapes[t.param]}, "
                                      f"the model has {list(t.shape)}")
                w = parameter(model, t.param)
                w.mul_(element_mask(torch.tensor(self.removed[t.param], dtype=torch.long), t).to(w))
        return model

    # ----------------------------------------------------------------------------------------- serialising

    def to_pruning_plan(self, model: nn.Module) -> PruningPlan:
        """As the library's `PruningPlan` (fingerprint of `model`, the unpruned architecture)."""
        numel = self.block.rows * self.block.cols
        sizes = {p: s[0] * s[1] // numel for p, s in self.shapes.items()}
        prov = PruningPlan.provenance_now(unit="block", block=str(self.block), shapes=self.shapes, **self.provenance)
        return PruningPlan(model_fingerprint(model), {p: list(v) for p, v in self.removed.items()}, sizes,
                           provenance=prov)

    @classmethod
    def from_pruning_plan(cls, plan: PruningPlan) -> "BlockPlan":
        prov = dict(plan.provenance)
        if prov.get("unit") != "block":
            raise ConfigError("prunekit.blocks: this pruning plan is not a block plan (provenance unit != 'block')")
        block, shapes = BlockShape.parse(prov.pop("block")), prov.pop("shapes")
        for key in ("unit", "prunekit", "date"):
            prov.pop(key, None)
        for p, ids in plan.removed.items():
            if p not in shapes or any(i < 0 or i >= plan.group_sizes[p] for i in ids):
                raise ConfigError(f"prunekit.blocks: block plan entry '{p}' has no shape or an id out of range")
        return cls(block, {p: list(v) for p, v in plan.removed.items()}, shapes, prov)

    def save(self, folder, model: nn.Module, original: Optional[nn.Module] = None) -> Path:
        """Write ``block_plan.json`` and ``model.safetensors`` (the masked dense weights of `model`) into `folder`.

        Args:
            original: the unpruned model of the same architecture, for the fingerprint (default `model`, whose
                dense architecture is unchanged by masking).
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_tensors(folder / WEIGHTS_FILE, model.state_dict())
        self.to_pruning_plan(original or model).save(folder / PLAN_FILE)
        return folder

    @classmethod
    def load(cls, folder, model: Optional[nn.Module] = None) -> "BlockPlan":
        """Read ``block_plan.json`` from `folder`; with a freshly built `model`, check its fingerprint, load the
        saved weights into it strictly and re-apply the masks."""
        folder = Path(folder)
        pruning_plan = PruningPlan.load(folder / PLAN_FILE)
        plan = cls.from_pruning_plan(pruning_plan)
        if model is not None:
            pruning_plan.check_model(model)
            load_state_dict_strict(model, load_tensors(folder / WEIGHTS_FILE), source=str(folder / WEIGHTS_FILE))
            plan.apply(model)
        return plan


def _owner(model: nn.Module, param: str) -> Optional[nn.Module]:
    module_name = param.rpartition(".")[0]
    try:
        return model.get_submodule(module_name) if module_name else model
    except AttributeError:
        return None


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def convert(model: nn.Module, plan: BlockPlan,
            keep_dense: Optional[Callable[[BlockTarget, int], bool]] = None) -> List[str]:
    """Replace the ``nn.Linear`` targets of `plan` by `BlockSparseLinear` modules, in place.

    Weights of ``nn.MultiheadAttention`` (``in_proj_weight``) stay dense and masked: their module cannot be swapped.

    Args:
        model: the model (its removed blocks need not be zeroed: only kept blocks are copied).
        plan: the block plan.
        keep_dense: ``keep_dense(target, kept_blocks) -> True`` leaves that layer a masked dense ``nn.Linear``
            (for instance where a latency table says the dense kernel is faster at that sparsity).

    Returns:
        The module names converted.
    """
    done = []
    plan.apply(model)
    for t in plan.targets(model, dense_only=True):
        if not t.swappable:
            continue
        keep = plan.keep_grid(t)
        if keep_dense is not None and keep_dense(t, int(keep.sum())):
            continue
        linear = model.get_submodule(t.module)
        _set_module(model, t.module, BlockSparseLinear.from_linear(linear, keep, t.block))
        done.append(t.module)
    return done
