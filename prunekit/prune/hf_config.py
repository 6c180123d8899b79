"""Rewrite a Hugging Face `config` after pruning, so save_pretrained / from_pretrained rebuild the same shapes.

A config can only say one number per field; when layers were pruned differently the config keeps the original
values and `config.prunekit_nonuniform` lists the fields that vary (reload such a model with `prunekit.load`).
"""
from __future__ import annotations

from typing import Dict, List

from torch import nn


def _uniform(values: List[int]):
    return values[0] if values and all(v == values[0] for v in values) else None


def input_embeddings(model: nn.Module):
    """The model's input embedding module, or None (vision models in transformers raise instead of returning)."""
    try:
        return model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    except (NotImplementedError, AttributeError):
        return None


def rewrite_hf_config(model: nn.Module, rms_eps_factor: float = 1.0) -> Dict[str, object]:
    """Update hidden size, head counts, head_dim and intermediate size of ``model.config``; returns the changes."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return {}
    from ..export.model_spec import remember_hf_config
    from ..graph.layers.attention import _head_dim, _qkv

    if not model.__dict__.pop("_prunekit_config_remembered", False):  # `prune.attributes` may have done it first
        remember_hf_config(model)  # the config before this rewrite: what prunekit.load rebuilds the original from

    changes: Dict[str, object] = {}
    nonuniform: List[str] = []
    emb = input_embeddings(model)
    if isinstance(emb, nn.Embedding) and hasattr(config, "hidden_size") and emb.embedding_dim != config.hidden_size:
        changes["hidden_size"] = emb.embedding_dim
    heads, kv_heads, dims = [], [], []
    for m in model.modules():
        names, mods = _qkv(m)
        if names is None:
            continue
        d = _head_dim(m, mods[0])
        heads.append(mods[0].out_features // d)
        kv_heads.append(mods[1].out_features // d)
        dims.append(d)
        if getattr(m, "c_attn", None) is not None:
            continue
    for m in model.modules():  # GPT-2 style fused attention
        if type(m).__name__.endswith("Attention") and hasattr(m, "c_attn") and isinstance(getattr(m, "num_heads", None), int):
            heads.append(m.num_heads)
            dims.append(m.head_dim)
    for field, values in (("num_attention_heads", heads), ("num_key_value_heads", kv_heads)):
        if values and hasattr(config, field) and getattr(config, field) is not None:
            v = _uniform(values)
            if v is None:
                nonuniform.append(field)
            elif v != getattr(config, field):
                changes[field] = v
    if dims and hasattr(config, "num_attention_heads"):
        d = _uniform(dims)
        if d is not None and (changes or getattr(config, "head_dim", None) is not None) and \
                "head_dim" in type(config)().to_dict():
            changes["head_dim"] = d
    inter = []
    for m in model.modules():
        up = getattr(m, "up_proj", None) or getattr(m, "fc1", None)
        if isinstance(up, nn.Linear) and (hasattr(m, "down_proj") or hasattr(m, "fc2")):
            inter.append(up.out_features)
        elif up is None and isinstance(getattr(m, "down_proj", None), nn.Linear):  # fused gate-up (Phi-3)
            inter.append(m.down_proj.in_features)
        dense = getattr(getattr(m, "intermediate", None), "dense", None)
        if isinstance(dense, nn.Linear):
            inter.append(dense.out_features)
        fc = getattr(m, "c_fc", None)  # GPT-2 MLP: Conv1D layers, width in `nf`
        if type(fc).__name__ == "Conv1D" and hasattr(m, "c_proj"):
            inter.append(fc.nf)
    inter_field = "intermediate_size" if hasattr(config, "intermediate_size") else \
        "n_inner" if hasattr(config, "n_inner") else None
    if inter and inter_field:
        v = _uniform(inter)
        if v is None:
            nonuniform.append(inter_field)
        elif v != getattr(config, inter_field):
            changes[inter_field] = v
    if rms_eps_factor != 1.0 and isinstance(getattr(config, "rms_norm_eps", None), float):
        changes["rms_norm_eps"] = config.rms_norm_eps * rms_eps_factor
    for k, v in changes.items():
        setattr(config, k, v)
    mismatched = _shapes_config_cannot_describe(model)
    if mismatched and changes:
        mismatched = _pin_derived_sizes(model, mismatched, changes)
    nonuniform += [f"shape of {name}" for name in mismatched[:3]]
    if nonuniform:
        config.prunekit_nonuniform = nonuniform
    elif hasattr(config, "prunekit_nonuniform"):
        del config.prunekit_nonuniform
    return changes


def _shapes_config_cannot_describe(model: nn.Module) -> List[str]:
    """Parameters whose shape differs in the model `type(model)(model.config)` builds (on the meta device, so
    nothing is allocated): where the config cannot say what pruning did (GPT-2 ties head count to hidden size),
    ``from_pretrained`` would fail and the folder needs `prunekit.export.load_pretrained`."""
    import copy

    import torch

    try:
        with torch.device("meta"):
            rebuilt = type(model)(copy.deepcopy(model.config))
    except Exception:  # noqa: BLE001 - the config does not even build: nothing it describes can be trusted
        return ["<config>"]
    own = dict(model.named_parameters())
    return [n for n, p in rebuilt.named_parameters() if n in own and tuple(p.shape) != tuple(own[n].shape)]


def _pin_derived_sizes(model: nn.Module, mismatched: List[str], changes: Dict[str, object]) -> List[str]:
    """Sizes a model derives from fields that changed (Phi-3: ``head_dim = hidden_size // num_attention_heads``
    unless the config holds ``head_dim``): a head size every attention module holds alike, absent from the config,
    is written into it when the rebuild then matches more shapes (checked on the meta device, like the rest)."""
    config = model.config
    candidates: Dict[str, set] = {}
    for m in model.modules():
        for attr, value in vars(m).items():
            if type(value) is int and attr in ("head_dim", "head_size", "attention_head_size"):
                candidates.setdefault(attr, set()).add(value)
    for attr, values in candidates.items():
        if len(values) != 1 or getattr(config, attr, None) is not None:
            continue
        setattr(config, attr, next(iter(values)))
        trial = _shapes_config_cannot_describe(model)
        if len(trial) < len(mismatched):
            mismatched = trial
            changes[attr] = next(iter(values))
        else:
            delattr(config, attr)
    return mismatched
