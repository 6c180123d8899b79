"""`PruningPlan`: pure data (JSON) saying which units of which groups are removed, for which model.

It is the hand-off between planning and applying, what is saved beside the pruned weights, and what replays a pruned
architecture onto a freshly built model. Nothing in it needs pickle.
"""
from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from ..errors import ConfigError

PLAN_VERSION = 1


def model_fingerprint(model: nn.Module) -> str:
    """A hash of the architecture: class name plus every state tensor's name, shape and dtype."""
    h = hashlib.sha256(type(model).__name__.encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
    return h.hexdigest()[:16]


def describe_inputs(inputs: Any) -> Any:
    """A JSON description of example inputs, enough to regenerate equivalent ones for tracing."""
    if isinstance(inputs, torch.Tensor):
        d = {"shape": list(inputs.shape), "dtype": str(inputs.dtype).replace("torch.", "")}
        if not inputs.is_floating_point():
            d["high"] = int(inputs.max()) + 1 if inputs.numel() else 1
        return d
    if isinstance(inputs, dict):
        return {"dict": {k: describe_inputs(v) for k, v in inputs.items()}}
    if isinstance(inputs, (tuple, list)):
        return {"tuple": [describe_inputs(v) for v in inputs]}
    return {"value": inputs}


def make_inputs(spec: Any, seed: int = 0) -> Any:
    gen = torch.Generator().manual_seed(seed)
    if "dict" in spec:
        return {k: make_inputs(v, seed) for k, v in spec["dict"].items()}
    if "tuple" in spec:
        return tuple(make_inputs(v, seed) for v in spec["tuple"])
    if "value" in spec:
        return spec["value"]
    dtype = getattr(torch, spec["dtype"])
    if dtype.is_floating_point:
        return torch.randn(spec["shape"], generator=gen).to(dtype)
    if dtype == torch.bool:
        return torch.ones(spec["shape"], dtype=torch.bool)
    return torch.randint(0, max(1, spec.get("high", 2)), spec["shape"], generator=gen).to(dtype)


@dataclass
class PruningPlan:
    """Which units to remove.

    Attributes:
        model_fingerprint: `model_fingerprint` of the ORIGINAL model the plan applies to.
        removed: group id -> sorted unit indices to remove.
        group_sizes: group id -> number of units the group had (a consistency check on replay).
        inputs: description of the example inputs the groups were traced with.
        model_spec: how to rebuild the original model (``{"registry": name}`` or ``{"factory": "mod:fn"}``).
        provenance: criterion, allocator, budget, prunekit version, date.
    """

    model_fingerprint: str
    removed: Dict[str, List[int]]
    group_sizes: Dict[str, int]
    inputs: Any = None
    model_spec: Dict[str, Any] = field(default_factory=dict)
    provenance: Dict[str, Any] = field(default_factory=dict)
    version: int = PLAN_VERSION

    def removed_tensors(self) -> Dict[str, torch.Tensor]:
        return {k: torch.tensor(v, dtype=torch.long) for k, v in self.removed.items() if v}

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "PruningPlan":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"malformed pruning plan (not JSON): {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError("malformed pruning plan: expected a JSON object")
        missing = {"model_fingerprint", "removed", "group_sizes"} - set(data)
        if missing:
            raise ConfigError(f"malformed pruning plan: missing keys {sorted(missing)}")
        if data.get("version", PLAN_VERSION) > PLAN_VERSION:
            raise ConfigError(f"pruning plan version {data['version']} is newer than this prunekit understands")
        removed = data["removed"]
        if not isinstance(removed, dict) or not all(isinstance(v, list) and all(isinstance(i, int) for i in v)
                                                    for v in removed.values()):
            raise ConfigError("malformed pruning plan: 'removed' must map group ids to lists of integers")
        known = {"model_fingerprint", "removed", "group_sizes", "inputs", "model_spec", "provenance", "version"}
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, path: str | Path) -> Path:
        from ..io import atomic_write_text

        return atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "PruningPlan":
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"pruning plan not found: {path}")
        return cls.from_json(path.read_text())

    def check_model(self, model: nn.Module) -> None:
        fp = model_fingerprint(model)
        if fp != self.model_fingerprint:
            raise ConfigError(
                f"this plan was made for another model (fingerprint {self.model_fingerprint}, "
                f"this {type(model).__name__} has {fp}); build the original architecture before replaying it")

    @staticmethod
    def provenance_now(**extra) -> Dict[str, Any]:
        from .. import __version__

        return {"prunekit": __version__, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(), **extra}
