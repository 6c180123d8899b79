"""Turn a `WidthConfig` into a real, freshly initialised network, and save it so `prunekit.load` rebuilds it.

Narrowing goes through the engine (`config.to_plan` -> `prunekit.apply`), so every layer rule applies. Widening
(PreCrop's "reconfigure" mode) has no plan form: `widen_groups` grows the same group members the engine would slice
(appending units at the end), for groups whose members are all plain convolutions, linear layers and BatchNorms
with one position per unit; anything else is refused by name.
"""
from __future__ import annotations

import copy
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import nn

from ..errors import ConfigError
from ..prune.plan import model_fingerprint
from .config import WidthConfig

_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_WIDENABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


INITS = ("reset", "kaiming")


def reinitialise(model: nn.Module, seed: Optional[int] = None, init: str = "reset") -> nn.Module:
    """Re-initialise every module for its current shape, in place, and reset BatchNorm running statistics.

    Args:
        seed: makes it reproducible (the global RNG state is restored afterwards).
        init: ``"reset"``: every module's own ``reset_parameters`` (PyTorch defaults); ``"kaiming"``: the same, then
            conv / linear weights drawn ``kaiming_normal_`` (fan-in, ReLU gain) and their biases zeroed: the
            "standard Kaiming init of the new shape" of the PreCrop paper, which the CIFAR ResNets also use.
    """
    if init not in INITS:
        raise ConfigError(f"reinitialise: init must be one of {INITS}, got {init!r}")
    gen_state = torch.random.get_rng_state()
    if seed is not None:
        torch.manual_seed(int(seed))
    try:
        for module in model.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
            if init == "kaiming" and isinstance(module, _WEIGHTED):
                nn.init.kaiming_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
    finally:
        if seed is not None:
            torch.random.set_rng_state(gen_state)
    return model


def build_model(config: WidthConfig, model: nn.Module, example_inputs: Any = None,
                forward_fn: Optional[Callable] = None, seed: Optional[int] = None, verify: bool = False,
                init: str = "reset") -> nn.Module:
    """A freshly initialised copy of `model` with the widths of `config`.

    The copy is narrowed by the engine (its groups and layer rules: residual ties, depthwise convolutions and the
    classifier are handled generally), widened where the config asks for it, then every module is re-initialised
    with its own ``reset_parameters`` (or Kaiming, `init`) for its NEW shape (PreCrop step 3: the standard init of
    the new shape).
    `model` is not modified.

    Args:
        config: the widths (group ids of `prunekit.analyze(model, example_inputs)`).
        model: the ORIGINAL architecture (any weights; they are discarded).
        example_inputs: inputs to trace with; defaults to the ones the config describes.
        forward_fn: ``forward_fn(model, inputs)`` when the model is not called as ``model(inputs)``.
        seed: seeds the re-initialisation.
        init: ``"reset"`` (the modules' own ``reset_parameters``) or ``"kaiming"`` (see `reinitialise`).
        verify: check the narrowing against the masked original (slow; the engine's own check).

    Returns:
        the new model, in train mode, with ``prunekit_width_plan`` (the plan, None when widened) and
        ``prunekit_width_config`` (the config with fingerprint and inputs filled in) attached.
    """
    from ..api import apply
    from ..planning.steps import analyse
    from ..prune.plan import describe_inputs, make_inputs

    if example_inputs is None:
        if config.inputs is None:
            raise ConfigError("build_model needs example_inputs (the width config describes none)")
        example_inputs = make_inputs(config.inputs)
    fingerprint = model_fingerprint(model)
    if config.model_fingerprint and config.model_fingerprint != fingerprint:
        raise ConfigError(f"build_model: the width config was made for another model (fingerprint "
                          f"{config.model_fingerprint}, this {type(model).__name__} has {fingerprint})")
    work = copy.deepcopy(model).eval()
    analysis = analyse(work, example_inputs, forward_fn)
    config = copy.deepcopy(config)
    config.model_fingerprint = fingerprint
    if config.inputs is None:
        config.inputs = describe_inputs(example_inputs)
    if not config.model_spec:
        from .config import _registry_spec

        config.model_spec = _registry_spec(model)
    widened = config.widened()
    narrowed = WidthConfig(kept={g: min(k, config.group_sizes[g]) for g, k in config.kept.items()},
                           group_sizes=config.group_sizes, model_spec=config.model_spec,
                           provenance=config.provenance, model_fingerprint=fingerprint, inputs=config.inputs)
    plan = narrowed.to_plan(analysis, work)
    if plan.removed:
        work = apply(work, plan, example_inputs, forward_fn=forward_fn, inplace=True, verify=verify,
                     analysis=analysis)
    if widened:
        widen_groups(work, analysis, widened)
    reinitialise(work, seed, init)
    work.train()
    object.__setattr__(work, "prunekit_width_plan", None if widened else plan)
    object.__setattr__(work, "prunekit_width_config", config)
    return work


def widen_groups(model: nn.Module, analysis: Any, extra: Dict[str, int]) -> nn.Module:
    """Append `extra[gid]` units to each group, in place (new positions are zero: re-initialise afterwards).

    The analysis must be of `model` as it is now for the widened groups' members (narrowing other groups first is
    fine: it does not move the positions of a different group's members along their own dims... except where two
    groups share a tensor dim, which is refused).

    Raises:
        ConfigError: a member that is not a plain conv / linear / BatchNorm, a depthwise or grouped convolution, or
            a member owning several positions per unit (heads).
    """
    from ..prune.apply import fix_attributes

    groups = {g.id: g for g in analysis.groups}
    modules = dict(model.named_modules())
    grow: Dict[Tuple[int, int], int] = defaultdict(int)
    owners: Dict[Tuple[int, int], list] = defaultdict(list)
    for gid, n in extra.items():
        if n <= 0:
            continue
        g = groups.get(gid)
        if g is None:
            raise ConfigError(f"widen: unknown group '{gid}'")
        if not g.prunable:
            raise ConfigError(f"widen: group '{gid}' cannot be resized: {'; '.join(g.reasons)}")
        for m in g.members:
            module = modules.get(m.module)
            if not isinstance(module, _WIDENABLE):
                raise ConfigError(f"widen: group '{gid}' has member '{m.module}' ({type(module).__name__}); only "
                                  f"Conv/Linear/BatchNorm members can be widened")
            if isinstance(module, nn.modules.conv._ConvNd) and module.groups != 1:
                raise ConfigError(f"widen: group '{gid}' touches grouped/depthwise convolution '{m.module}' "
                                  f"(groups={module.groups}); widening it is not supported")
            if m.index_map.shape[1] != 1:
                raise ConfigError(f"widen: group '{gid}' member '{m.module}.{m.param}' owns "
                                  f"{m.index_map.shape[1]} positions per unit; only one-position units widen")
            tensor = getattr(module, m.param)
            key = (id(tensor), m.dim)
            if owners[key] and owners[key][0][2] != gid:
                raise ConfigError(f"widen: tensor '{m.module}.{m.param}' dim {m.dim} belongs to two widened groups")
            grow[key] = n
            owners[key].append((m.module, m.param, gid))
    old_shapes: Dict[str, Dict[str, tuple]] = defaultdict(dict)
    touched = set()
    for key, n in grow.items():
        mod_name, pname, _ = owners[key][0]
        tensor = getattr(modules[mod_name], pname)
        dim = key[1]
        pad_shape = list(tensor.shape)
        pad_shape[dim] = n
        fill = torch.ones if pname == "running_var" else torch.zeros
        new_data = torch.cat([tensor.data, fill(pad_shape, dtype=tensor.dtype, device=tensor.device)], dim=dim)
        replacement = nn.Parameter(new_data, requires_grad=tensor.requires_grad) \
            if isinstance(tensor, nn.Parameter) else new_data
        for mod, p, _ in owners[key]:
            module = modules[mod]
            old_shapes[mod].setdefault(p, tuple(getattr(module, p).shape))
            touched.add(mod)
            if p in module._parameters:
                module._parameters[p] = replacement
            else:
                module._buffers[p] = replacement
    fix_attributes(model, touched, old_shapes)
    return model


def save_width_model(model: nn.Module, out_dir: str | Path, config: Optional[WidthConfig] = None,
                     extra: Optional[Callable[[Path], None]] = None) -> Path:
    """Save a model built by `build_model` (trained or not) in the plan format: ``prunekit.load(out_dir)`` builds
    the original from the plan's ``model_spec``, replays the plan and loads these weights. The plan's provenance
    marks it as a width config trained from scratch (``kind: width_config``, ``from_scratch: true``) and embeds the
    config (``WidthConfig.load(out_dir)`` reads it back).

    Raises:
        ConfigError: the model was not built by `build_model`, or it was widened (no plan form).
    """
    from ..export.checkpoint import save

    plan = getattr(model, "prunekit_width_plan", None)
    config = config or getattr(model, "prunekit_width_config", None)
    if config is not None and config.widened():
        raise ConfigError(f"save_width_model: groups {sorted(config.widened())[:6]} are wider than the original; "
                          f"the plan format can only remove units. Save the WidthConfig (config.save) and the "
                          f"weights (safetensors) instead, and rebuild with build_model")
    if plan is None:
        raise ConfigError("save_width_model: the model carries no width plan; build it with "
                          "prunekit.widths.build_model")
    return save(model, plan, out_dir, hf=False, extra=extra)
