"""After slicing: rewrite the attributes that sizes in the forward are read from (`graph.attr_solve`).

A module attribute rewritten to the same value in every module that holds it, whose name the model's Hugging Face
config also holds with the old value (Phi-3's ``num_key_value_heads``), is rewritten in the config as well, so that
the config describes the pruned model; `prune.hf_config` then checks that it does (a rebuild on the meta device).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, List, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..graph.types import ChannelGroup


def check_ties(groups: Sequence[ChannelGroup], removed: Dict[str, torch.Tensor]) -> None:
    """Groups of one class (``tags["tied"]``: they share an attribute such as a config's head count) must lose
    equally many units; raise ConfigError naming them and the attribute otherwise."""
    classes: Dict[str, List[ChannelGroup]] = defaultdict(list)
    for g in groups:
        if g.tags.get("tied"):
            classes[str(g.tags["tied"])].append(g)
    for members in classes.values():
        counts = {g.id: len(torch.as_tensor(removed.get(g.id, []))) for g in members}
        if len(set(counts.values())) > 1:
            raise ConfigError(f"groups {sorted(counts)} share the attribute(s) {members[0].tags.get('tied_by')} and "
                              f"must lose equally many units; the plan removes {counts}")


def _owner(model: nn.Module, path: str):
    try:
        return model.get_submodule(path)
    except AttributeError:
        parent, _, attr = path.rpartition(".")
        return getattr(model.get_submodule(parent) if parent else model, attr)


def rewrite_attributes(model: nn.Module, rewrites: Sequence, removed: Dict[str, torch.Tensor]) -> Dict[str, int]:
    """Set each attribute to its value for the removed counts; returns {attribute key: new value}."""
    counts = {gid: len(torch.as_tensor(idx)) for gid, idx in removed.items()}
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        from ..export.model_spec import remember_hf_config

        remember_hf_config(model)  # the original's config, before anything below rewrites it
        object.__setattr__(model, "_prunekit_config_remembered", True)
    changed: Dict[str, int] = {}
    by_name: Dict[str, set] = defaultdict(set)
    old_by_name: Dict[str, set] = defaultdict(set)
    for rw in rewrites:
        try:
            value = rw.value(counts)
        except ValueError as exc:
            raise ConfigError(f"cannot rewrite attribute after pruning: {exc}") from None
        if value == rw.old:
            continue
        obj = _owner(model, rw.owner)
        setattr(obj, rw.name, value)
        changed[rw.key] = value
        if isinstance(obj, nn.Module):
            by_name[rw.name].add(value)
            old_by_name[rw.name].add(rw.old)
    if config is not None and hasattr(config, "to_dict"):
        for name, values in by_name.items():
            holders = [m for m in model.modules() if type(vars(m).get(name)) is int]
            if len(values) == 1 and old_by_name[name] == {getattr(config, name, None)} and \
                    all(vars(m)[name] in values for m in holders):
                setattr(config, name, next(iter(values)))
                changed[f"config.{name}"] = next(iter(values))
    return changed


_COUNT_WORDS = ("head",)
_NOT_COUNTS = ("dim", "size", "idx", "index")


def rewrite_head_counts(model: nn.Module, groups: Sequence[ChannelGroup], removed: Dict[str, torch.Tensor],
                        skip: Sequence[str] = ()) -> Dict[str, int]:
    """Head-count attributes that the forward never read (DistilBERT's ``n_heads``: its forward reshapes with
    ``-1``), kept true to the pruned model for code that reads them later (``prune_heads``, exporters, users).

    A group whose units each own several output positions of sibling projections (whole heads of q/k/v) lowers an
    integer attribute of their common parent module whose name speaks of heads (``n_heads``, ``num_heads``,
    ``num_attention_heads``; not ``head_dim``) and whose value is the group's unit count. Attributes the forward
    read are solved from their uses instead (`graph.attr_solve`) and listed in `skip`.
    """
    modules = dict(model.named_modules())
    changed: Dict[str, int] = {}
    for g in groups:
        n = len(torch.as_tensor(removed.get(g.id, [])))
        outs = [m for m in g.members if m.role == "out" and m.index_map.shape[1] > 1]
        if not n or len(outs) < 2:
            continue
        parents = {m.module.rpartition(".")[0] for m in outs}
        if len(parents) != 1:
            continue
        parent = parents.pop()
        module = modules.get(parent)
        if module is None:
            continue
        for attr, value in list(vars(module).items()):
            key = f"{parent}.{attr}" if parent else attr
            name = attr.lower()
            if type(value) is not int or key in skip or value != g.size or attr.startswith("_") or \
                    not any(w in name for w in _COUNT_WORDS) or any(w in name for w in _NOT_COUNTS):
                continue
            setattr(module, attr, g.size - n)
            changed[key] = g.size - n
    return changed
