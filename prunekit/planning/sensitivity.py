"""Per-group sensitivity curves: held-out loss and accuracy against the fraction of one group's units removed.

For each prunable, exact channel group and each ratio r, the lowest ``floor(r * size)`` units of that group alone
(ranked by a data-free criterion, ``order``) are removed and the model is evaluated on held-out batches. Removal is
simulated by zeroing the units' producer slices (role ``out``: weight rows and bias) and norm affine slices (role
``norm``), which computes what the pruned model computes (the independent check of `prunekit.testing.fuzz_check`
relies on the same identity); inexact groups (a LayerNorm over the channels) are skipped, since zeroing is not
removal there.

Curves are cached as plain JSON under ``<cache>/sensitivity/`` keyed by the model (architecture fingerprint and a
digest of its weights), the data (dataset, split, amount, seed) and the ratios and order, so `prunekit analyze
--sensitivity`, the ``sensitivity`` criterion (`prunekit.importance.sensitivity`) and the HTML report share one
computation.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import ConfigError

METRICS = ("loss", "accuracy")
FORMAT = "prunekit-sensitivity"


@dataclass
class SensitivityConfig:
    """What to measure.

    Attributes:
        ratios: fractions of each group's units removed, each in (0, 1), increasing.
        order: data-free criterion ranking the units inside a group (removed lowest first): l1, l2, fpgm, bn_scale.
    """

    ratios: Tuple[float, ...] = (0.25, 0.5, 0.75)
    order: str = "l1"

    def __post_init__(self):
        self.ratios = tuple(float(r) for r in self.ratios)
        if not self.ratios or any(not 0.0 < r < 1.0 for r in self.ratios):
            raise ConfigError(f"sensitivity ratios must each lie in (0, 1), got {list(self.ratios)}")
        if list(self.ratios) != sorted(set(self.ratios)):
            raise ConfigError(f"sensitivity ratios must be increasing and distinct, got {list(self.ratios)}")
        if not self.order:
            raise ConfigError("sensitivity order: name a data-free criterion (l1, l2, fpgm, bn_scale)")


@dataclass
class SensitivityCurves:
    """Measured curves (plain data; `to_json` / `from_json`).

    Attributes:
        key: the cache key (model, data, ratios, order).
        model_key: `model_key` of the model measured.
        fingerprint: its architecture fingerprint (`prunekit.prune.plan.model_fingerprint`).
        data: description of the held-out data (dataset, split, batches, batch size, seed), or ``{"custom": ...}``.
        ratios: the ratios, without 0.
        order: the criterion that ranked units inside each group.
        baseline: {"loss": float, "accuracy": float or None} of the unpruned model.
        groups: group id -> {"size": n, "removed": [units removed per ratio], "loss": [per ratio],
            "accuracy": [per ratio or None], "order": [unit indices, removed first]}.
        skipped: group id -> why no curve was measured.
    """

    key: str
    model_key: str
    fingerprint: str
    data: Dict[str, Any]
    ratios: List[float]
    order: str
    baseline: Dict[str, Optional[float]]
    groups: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    skipped: Dict[str, str] = field(default_factory=dict)

    def damage(self, gid: str, metric: str = "loss") -> List[float]:
        """How much worse the model gets at ratios ``[0] + ratios``: loss increase, or accuracy drop (>= 0 means
        worse). Starts at 0."""
        if metric not in METRICS:
            raise ConfigError(f"sensitivity metric must be one of {METRICS}, got {metric!r}")
        values = self.groups[gid][metric]
        base = self.baseline.get(metric)
        if base is None or any(v is None for v in values):
            raise ConfigError(f"sensitivity curves hold no '{metric}' (the model's outputs are not class logits); "
                              f"use metric 'loss'")
        sign = 1.0 if metric == "loss" else -1.0
        return [0.0] + [sign * (v - base) for v in values]

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, **asdict(self)}, indent=1)

    @classmethod
    def from_json(cls, text: str, where: str = "sensitivity curves") -> "SensitivityCurves":
        """Read curves written by `to_json`, refusing anything else with a message naming `where`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: not JSON ({exc})") from None
        if not isinstance(data, dict) or data.pop("format", None) != FORMAT:
            raise ConfigError(f"{where}: not a prunekit sensitivity file (format '{FORMAT}')")
        names = {f for f in cls.__dataclass_fields__}
        missing = sorted(names - set(data) - {"groups", "skipped"})
        if missing:
            raise ConfigError(f"{where}: missing keys {missing}")
        curves = cls(**{k: v for k, v in data.items() if k in names})
        n = len(curves.ratios)
        for gid, g in curves.groups.items():
            if not isinstance(g, dict) or any(len(g.get(k) or ()) != n for k in ("removed", "loss", "accuracy")) \
                    or sorted(g.get("order") or ()) != list(range(int(g.get("size", -1)))):
                raise ConfigError(f"{where}: group '{gid}' does not hold one value per ratio and a unit order")
        return curves

    def save(self, path: str | Path) -> Path:
        from ..io import atomic_write_text

        return atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "SensitivityCurves":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"sensitivity curves not found: {path}")
        return cls.from_json(path.read_text(), where=str(path))


def model_key(model: nn.Module) -> str:
    """Architecture fingerprint plus a digest of every state tensor's values: the same model, the same key."""
    from ..prune.plan import model_fingerprint

    h = hashlib.sha256(model_fingerprint(model).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    from ..paths import cache_root

    return cache_root() / "sensitivity"


def cache_key(mkey: str, data: Dict[str, Any], config: SensitivityConfig) -> str:
    blob = json.dumps({"data": data, "ratios": list(config.ratios), "order": config.order}, sort_keys=True)
    return f"{mkey}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def cached_for(model: nn.Module, directory: Optional[Path] = None) -> List[Path]:
    """Cached curve files of this exact model (any data / ratios), newest first."""
    folder = directory or cache_dir()
    if not folder.is_dir():
        return []
    files = list(folder.glob(f"{model_key(model)}-*.json"))
    return sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)


def latest_cached(model: nn.Module, directory: Optional[Path] = None) -> Optional[SensitivityCurves]:
    """The newest cached curves of this exact model, or None."""
    files = cached_for(model, directory)
    return SensitivityCurves.load(files[0]) if files else None


# --- measuring ---------------------------------------------------------------------------------------------------

def evaluate(model: nn.Module, batches: Sequence[Any], loss_fn: Optional[Callable] = None
             ) -> Dict[str, Optional[float]]:
    """Mean loss (and accuracy for class logits) over batches.

    Args:
        model: in eval mode.
        batches: ``(inputs, labels)`` tuples (labels [B] ints) or dicts of keyword inputs (the model's own
            ``output.loss``, e.g. ``{"input_ids", "labels"}`` for a causal LM).
        loss_fn: ``loss_fn(output, batch)``; None: the output's ``loss`` attribute.

    Returns:
        {"loss": mean over batches, weighted by batch size; "accuracy": top-1 or None}.
    """
    total, loss_sum, correct, has_acc = 0, 0.0, 0, True
    with torch.no_grad():
        for batch in batches:
            if isinstance(batch, dict):
                out = model(**batch)
                n = int(next(iter(batch.values())).shape[0])
            else:
                out = model(batch[0])
                n = int(batch[0].shape[0])
            loss = loss_fn(out, batch) if loss_fn is not None else getattr(out, "loss", None)
            if loss is None:
                raise ConfigError("sensitivity: no loss for these batches (pass loss_fn, or batches the model "
                                  "computes its own loss from)")
            loss_sum += float(loss) * n
            total += n
            logits = out.logits if hasattr(out, "logits") else out
            labels = batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None
            if has_acc and isinstance(logits, torch.Tensor) and logits.dim() == 2 and labels is not None \
                    and labels.dim() == 1 and not labels.is_floating_point():
                correct += int((logits.argmax(1) == labels).sum())
            else:
                has_acc = False
    if total == 0:
        raise ConfigError("sensitivity: no held-out batches")
    return {"loss": loss_sum / total, "accuracy": correct / total if has_acc else None}


def _unit_order(model: nn.Module, groups, order: str) -> Dict[str, List[int]]:
    """Units of each group, lowest `order` score first (l1 where `order` has no signal for a group)."""
    from ..importance.base import create

    crit = create(order)
    if crit.requires:
        raise ConfigError(f"sensitivity order '{order}' needs calibration statistics; use a data-free criterion "
                          f"(l1, l2, fpgm, bn_scale)")
    scores = crit.score(model, groups)
    fallback = create("l1").score(model, [g for g in groups if g.id not in scores])
    out = {}
    for g in groups:
        s = scores.get(g.id, fallback.get(g.id))
        out[g.id] = torch.argsort(s, stable=True).tolist() if s is not None else list(range(g.size))
    return out


class _Masker:
    """Zeroes the producer / norm-affine slices of chosen units of one group, and puts them back."""

    def __init__(self, model: nn.Module):
        self.modules = dict(model.named_modules())
        self.saved: List[Tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]] = []

    def mask(self, group, units: Sequence[int]) -> None:
        units_t = torch.tensor(list(units), dtype=torch.long)
        for member in group.members:
            if member.role not in ("out", "norm") or member.param not in ("weight", "bias"):
                continue
            tensor = getattr(self.modules[member.module], member.param)
            positions = torch.unique(member.index_map[units_t].reshape(-1))
            self.saved.append((tensor, member.dim, positions, tensor.detach().index_select(member.dim,
                                                                                          positions).clone()))
            tensor.data.index_fill_(member.dim, positions, 0.0)

    def restore(self) -> None:
        for tensor, dim, positions, values in reversed(self.saved):
            tensor.data.index_copy_(dim, positions, values)
        self.saved = []


def measure(model: nn.Module, inputs: Any, batches: Sequence[Any], loss_fn: Optional[Callable] = None,
            config: Optional[SensitivityConfig] = None, data: Optional[Dict[str, Any]] = None, analysis: Any = None,
            progress: bool = True, use_cache: bool = True, directory: Optional[Path] = None) -> SensitivityCurves:
    """Sensitivity curves of every prunable exact group, from the cache when this model/data/config was measured.

    Args:
        model: the model (not modified: a copy is masked).
        inputs: example inputs for tracing.
        batches: held-out batches (see `evaluate`).
        loss_fn: ``loss_fn(output, batch)``, or None for the model's own loss.
        config: ratios and unit order.
        data: a JSON description of `batches` for the cache key (dataset, split, amount, seed); None: the batches'
            own digest (a custom set is keyed by its values).
        analysis: a `prunekit.analyze` result for `model` (traced here when None).
        progress: show a progress bar.
        use_cache: read and write ``<cache>/sensitivity/<key>.json``.
        directory: another cache folder.

    Returns:
        the curves (also written to the cache when `use_cache`).
    """
    import copy

    from ..prune.plan import model_fingerprint
    from .steps import analyse

    config = config or SensitivityConfig()
    mkey = model_key(model)
    data = dict(data) if data is not None else {"custom": _batches_digest(batches)}
    key = cache_key(mkey, data, config)
    path = (directory or cache_dir()) / f"{key}.json"
    if use_cache and path.is_file():
        return SensitivityCurves.load(path)
    work = copy.deepcopy(model).eval()
    analysis = analysis or analyse(work, inputs)
    groups, skipped = [], {}
    for g in analysis.groups:
        if not g.prunable:
            skipped[g.id] = "; ".join(g.reasons) or "not prunable"
        elif not g.exact:
            skipped[g.id] = "inexact (" + "; ".join(g.reasons) + "): zeroing is not removal"
        elif g.size <= 1:
            skipped[g.id] = "a single unit"
        else:
            groups.append(g)
    orders = _unit_order(work, groups, config.order)
    curves = SensitivityCurves(key=key, model_key=mkey, fingerprint=model_fingerprint(model), data=data,
                               ratios=list(config.ratios), order=config.order, baseline=evaluate(work, batches,
                                                                                                 loss_fn),
                               skipped=skipped)
    masker = _Masker(work)
    for group, ratio in _track([(g, r) for g in groups for r in config.ratios], progress):
        entry = curves.groups.setdefault(group.id, {"size": group.size, "removed": [], "loss": [], "accuracy": [],
                                                    "order": orders[group.id]})
        k = min(group.size - 1, int(math.floor(ratio * group.size + 1e-9)))
        if k > 0:
            masker.mask(group, orders[group.id][:k])
            try:
                result = evaluate(work, batches, loss_fn)
            finally:
                masker.restore()
        else:
            result = dict(curves.baseline)
        entry["removed"].append(k)
        entry["loss"].append(result["loss"])
        entry["accuracy"].append(result["accuracy"])
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        curves.save(path)
    return curves


def _track(items: List[Any], progress: bool) -> Iterable[Any]:
    if not progress or not items:
        return items
    from rich.progress import track

    return track(items, description="sensitivity (group x ratio)")


def _batches_digest(batches: Sequence[Any]) -> str:
    h = hashlib.sha256()
    for batch in batches:
        values = batch.values() if isinstance(batch, dict) else batch
        for t in values:
            if isinstance(t, torch.Tensor):
                h.update(str(tuple(t.shape)).encode())
                h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
