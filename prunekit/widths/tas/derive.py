"""From searched widths to a network: the `WidthConfig` of the argmax widths, and the freshly initialised,
narrower model the engine builds from it (TAS trains that model from scratch with KD; methods.md 7(a))."""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from ..config import WidthConfig


def tas_width_config(analysis, widths: Dict[str, int], model: nn.Module, inputs: Any,
                     model_spec: Optional[Dict[str, Any]] = None, **provenance: Any) -> WidthConfig:
    """The `WidthConfig` of searched widths (group id -> kept channels); every other group keeps its full width.

    Args:
        analysis: `prunekit.analyze(model, inputs)` (the groups the search ran on).
        widths: the derived widths (`SearchResult.widths`).
        model: the unpruned model (fingerprint). inputs: its example inputs.
        model_spec: how `prunekit.load` rebuilds the unpruned architecture (``{"registry": name}``).
        **provenance: recorded in the config (method, budget, search facts).
    """
    from ...prune.plan import describe_inputs, model_fingerprint

    sizes = {g.id: g.size for g in analysis.groups}
    kept = {gid: int(widths.get(gid, size)) for gid, size in sizes.items()}
    spec = dict(model_spec) if model_spec else {}
    if not spec:
        tag = getattr(model, "prunekit_model_spec", None)
        spec = {k: v for k, v in (tag or {}).items() if k != "fingerprint"}
    return WidthConfig(kept=kept, group_sizes=sizes, model_spec=spec, provenance={"method": "tas", **provenance},
                       model_fingerprint=model_fingerprint(model), inputs=describe_inputs(inputs))


def build_searched(config: WidthConfig, analysis, fresh: nn.Module, inputs: Any, seed: int = 0
                   ) -> Tuple[nn.Module, Any]:
    """The narrower network of `config` on `fresh` (an unpruned, freshly initialised copy of the architecture) and
    the plan that narrows it (the engine removes the last channels of each group; `prunekit.load` replays it).

    Uses part A's `prunekit.widths.build_model` when available (fresh initialisation of the new shape), else the
    engine's `prunekit.apply` of the config's plan on `fresh` (its constructor initialisation, sliced).

    Returns:
        (model in eval mode, `PruningPlan`).
    """
    import prunekit

    plan = config.to_plan(analysis, fresh)
    try:
        from .. import build_model  # part A's builder, once it exists
    except ImportError:
        build_model = None
    if build_model is not None:
        model = build_model(config, fresh, inputs, seed=seed)
    else:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = prunekit.apply(fresh, plan, inputs)
    return model.eval(), plan
