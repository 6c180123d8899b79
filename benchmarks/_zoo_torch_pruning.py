"""Torch-Pruning side of benchmarks/engine_zoo.py: the pruner each model family gets (the settings of Torch-Pruning's
own examples), run under the time limit and checked like prunekit's result.
"""
from __future__ import annotations

import copy
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _zoo_check import _finish, _short, _sizes, run, time_limit  # noqa: E402

TP_TIME_LIMIT_S = 120.0  # a Torch-Pruning run still going after this is reported as timed out

def output_layers(model: nn.Module, inputs: Any) -> List[nn.Module]:
    """Leaf modules whose output tensor is returned by the model as it is (classifier, lm_head)."""
    seen: Dict[int, Tuple[nn.Module, torch.Tensor]] = {}
    hooks = [m.register_forward_hook(lambda m, a, o: seen.__setitem__(id(o), (m, o)) if isinstance(o, torch.Tensor)
                                     else None)
             for m in model.modules() if not list(m.children())]
    try:
        outs = run(model, inputs)
    finally:
        for h in hooks:
            h.remove()
    found = []
    for t in outs:
        if id(t) in seen and seen[id(t)][1] is t and seen[id(t)][0] not in found:
            found.append(seen[id(t)][0])
    return found


def _heads_fixup(pruner, model: nn.Module) -> None:
    """After Torch-Pruning: rewrite the head bookkeeping of HF BERT/ViT/Swin self-attention (as its examples do)."""
    for m in model.modules():
        if hasattr(m, "query") and hasattr(m, "all_head_size"):
            m.num_attention_heads = pruner.num_heads.get(m.query, m.num_attention_heads)
            m.attention_head_size = m.query.out_features // m.num_attention_heads
            m.all_head_size = m.query.out_features


def _llm_fixup(pruner, model: nn.Module) -> None:
    """After Torch-Pruning: rewrite head counts and sizes of a HF Llama-style model (its LLM example's epilogue)."""
    config = model.config
    for m in model.modules():
        if hasattr(m, "q_proj") and hasattr(m, "head_dim"):
            heads, kv = m.q_proj.out_features // m.head_dim, m.k_proj.out_features // m.head_dim
            m.num_key_value_groups = max(heads // max(kv, 1), 1)
            config.num_attention_heads, config.num_key_value_heads = heads, kv
        if hasattr(m, "gate_proj"):
            config.intermediate_size = m.gate_proj.out_features
    config.hidden_size = model.lm_head.in_features


def _patch_merging_pruner():
    """Torch-Pruning pruning functions for HF Swin's patch merging (its Swin example defines the same)."""
    import torch_pruning as tp

    class PatchMergingPruner(tp.BasePruningFunc):
        def prune_out_channels(self, layer, idxs):
            tp.prune_linear_out_channels(layer.reduction, idxs)
            return layer

        def prune_in_channels(self, layer, idxs):
            four = [i + k * layer.dim for k in range(4) for i in idxs]
            tp.prune_linear_in_channels(layer.reduction, four)
            tp.prune_layernorm_out_channels(layer.norm, four)
            layer.dim -= len(idxs)
            return layer

        def get_out_channels(self, layer):
            return layer.reduction.out_features

        def get_in_channels(self, layer):
            return layer.dim

    return PatchMergingPruner()


def tp_pruner(family: str, model: nn.Module, inputs: Any, ratio: float = 0.5):
    """A Torch-Pruning `BasePruner` for `model` with the settings of its examples; returns (pruner, fix-up)."""
    import torch_pruning as tp

    kw: Dict[str, Any] = dict(ignored_layers=output_layers(model, inputs), num_heads={}, in_channel_groups={},
                              out_channel_groups={}, channel_groups={})
    fix = None
    if family.startswith("hf_"):
        kw["output_transform"] = (lambda out: out.pooler_output.sum()) if family == "hf_bert" else \
            (lambda out: out.logits.sum())
    if family == "yolo":
        kw["ignored_layers"] = [model.detect]  # as in its YOLOv8 example (which also swaps C2f's chunk for split)
    elif family == "cifar_vit":
        kw["num_heads"] = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    elif family in ("hf_vit", "hf_bert", "hf_swin"):
        for m in model.modules():
            if hasattr(m, "query") and hasattr(m, "num_attention_heads"):
                kw["num_heads"].update({p: m.num_attention_heads for p in (m.query, m.key, m.value)})
        fix = _heads_fixup
        if family == "hf_bert":
            kw.update(prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=ratio,
                      ignored_layers=[model.pooler])
        elif family == "hf_swin":
            from transformers.models.swin.modeling_swin import SwinPatchMerging

            kw.update(customized_pruners={SwinPatchMerging: _patch_merging_pruner()},
                      root_module_types=[nn.Linear, nn.LayerNorm, SwinPatchMerging])
    elif family == "hf_llm":
        for m in model.modules():
            if hasattr(m, "q_proj") and hasattr(m, "k_proj"):
                kw["num_heads"].update({m.q_proj: model.config.num_attention_heads,
                                        m.k_proj: model.config.num_key_value_heads,
                                        m.v_proj: model.config.num_key_value_heads})
        kw.update(prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=ratio,
                  ignored_layers=[model.lm_head])
        fix = _llm_fixup
    pruner = tp.pruner.BasePruner(model, example_inputs=inputs, importance=tp.importance.GroupMagnitudeImportance(p=1),
                                  pruning_ratio=ratio, **kw)
    return pruner, fix


def run_torch_pruning(family: str, model: nn.Module, x: Any, x_check: Any,
                      time_limit_s: float = TP_TIME_LIMIT_S) -> Dict[str, Any]:
    row: Dict[str, Any] = {"tool": "torch-pruning"}
    row["params_before"], row["macs_before"] = _sizes(model, x)
    work = copy.deepcopy(model)
    start = time.perf_counter()
    try:
        with time_limit(time_limit_s):
            pruner, fix = tp_pruner(family, work, x)
            pruner.step()
            if fix is not None:
                fix(pruner, work)
    except TimeoutError as exc:
        row.update(status="timed out", reason=str(exc), traceback=traceback.format_exc(limit=-3),
                   seconds=time.perf_counter() - start)
        return row
    except Exception as exc:  # noqa: BLE001 - a Torch-Pruning crash is a result of this benchmark
        row.update(status="crashed", reason=_short(exc), traceback=traceback.format_exc(limit=-4),
                   seconds=time.perf_counter() - start)
        return row
    row["seconds"] = time.perf_counter() - start
    history = copy.deepcopy(pruner.pruning_history())

    def replay(coded: nn.Module) -> nn.Module:
        again, _ = tp_pruner(family, coded, x)
        again.load_pruning_history(copy.deepcopy(history))
        return coded

    _finish(row, model, work, replay, x, x_check)
    return row


# --------------------------------------------------------------------------------------------------------- report
