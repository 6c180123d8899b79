"""The pruning engine on the model zoo, beside Torch-Pruning: does each tool prune, refuse, crash, or go silently wrong?

Every model is pruned at 50% of its channels (uniform, L1 magnitude) by prunekit (``analyze`` + ``plan`` + ``apply``)
and by Torch-Pruning 1.6 (``BasePruner`` + ``GroupMagnitudeImportance(p=1)``, output layers ignored, the settings of
its own examples for Hugging Face models). Both results are checked the same way, independently of either tool: the
positions each tool removed are read back by replaying its pruning on a copy whose tensors hold position codes; the
original model with those positions zeroed (the masked original) must compute what the pruned model computes, on
inputs different from the ones used to prune (relative max error <= 1e-4).

Statuses: ``pruned``; ``pruned (inexact: norm statistics)`` (differs from the masked original only because a
LayerNorm/RMSNorm now averages over fewer channels: equal to a reference that renormalises over the kept ones);
``refused`` (nothing prunable, with the reason); ``crashed`` (an exception, or a pruned model that does not run);
``timed out`` (Torch-Pruning still running after 120 s, 60 s with --quick); ``output shape changed``; ``not pruned``;
``SILENTLY WRONG`` (runs, differs from the masked original).

    python benchmarks/engine_zoo.py --json out.json [--quick] [--models a,b] [--docs docs/results_engine.md]
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (THREADS_HELP, print_table, print_targets, report, target, update_doc_section,  # noqa: E402
                     write_json)

TOLERANCE = 1e-4
TP_TIME_LIMIT_S = 120.0
DOC = Path(__file__).resolve().parent.parent / "docs" / "results_engine.md"


# ------------------------------------------------------------------ the four Torch-Pruning failure cases, as models

def conv_bn(c1: int, c2: int, k: int = 1, s: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c1, c2, k, s, k // 2, bias=False), nn.BatchNorm2d(c2), nn.SiLU())


class C2fCase(nn.Module):
    """YOLOv8 C2f in small: conv -> chunk(2) -> bottleneck with residual on one half -> cat -> conv -> classifier.

    Shapes: [B, 3, 32, 32] -> [B, 10].
    """

    def __init__(self, c: int = 16):
        super().__init__()
        self.stem, self.cv1 = conv_bn(3, c, 3, 2), conv_bn(c, 2 * c)
        self.m1, self.m2 = conv_bn(c, c, 3), conv_bn(c, c, 3)
        self.cv2, self.head = conv_bn(3 * c, 2 * c), nn.Linear(2 * c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.cv1(self.stem(x)).chunk(2, 1)
        m = b + self.m2(self.m1(b))
        return self.head(self.cv2(torch.cat([a, b, m], 1)).mean((2, 3)))


class ShuffleCase(nn.Module):
    """A channel shuffle (view -> transpose -> reshape, 4 groups) between two convs. [B, 3, 32, 32] -> [B, 10]."""

    def __init__(self, c: int = 32, groups: int = 4):
        super().__init__()
        self.groups = groups
        self.stem, self.conv_a, self.conv_b = conv_bn(3, 16, 3, 2), conv_bn(16, c), conv_bn(c, c, 3)
        self.head = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_a(self.stem(x))
        b, c, h, w = y.shape
        y = y.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)
        return self.head(self.conv_b(y).mean((2, 3)))


class RMSNormCase(nn.Module):
    """``nn.RMSNorm`` between two linears: [B, T, 32] -> fc1 (64) -> RMSNorm -> fc2 -> GELU -> fc3 -> [B, T, 10]."""

    def __init__(self):
        super().__init__()
        self.fc1, self.norm, self.fc2, self.fc3 = nn.Linear(32, 64), nn.RMSNorm(64, eps=1e-6), nn.Linear(64, 64), \
            nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.nn.functional.gelu(self.fc2(self.norm(self.fc1(x)))))


class MaskCase(nn.Module):
    """A [B, C, H, W] feature map times a [B, 1, H, W] mask from a 1-channel conv + sigmoid.

    Shapes: [B, 3, 32, 32] -> [B, 10].
    """

    def __init__(self, c: int = 32):
        super().__init__()
        self.stem, self.feat, self.gate = conv_bn(3, 16, 3, 2), conv_bn(16, c, 3), nn.Conv2d(c, 1, 1)
        self.conv_c, self.head = conv_bn(c, c, 3), nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.feat(self.stem(x))
        return self.head(self.conv_c(f * torch.sigmoid(self.gate(f))).mean((2, 3)))


CASES = {"case_c2f_chunk": C2fCase, "case_channel_shuffle": ShuffleCase, "case_rmsnorm": RMSNormCase,
         "case_mask_broadcast": MaskCase}


# --------------------------------------------------------------------------------------------------------- the zoo

@dataclass
class Entry:
    """One zoo model: `family` selects the Torch-Pruning settings; `quick` says whether --quick runs it."""

    name: str
    family: str
    quick: bool = True


def zoo() -> List[Entry]:
    cnn = ["cifar_resnet20", "cifar_resnet56", "cifar_resnet56_b", "cifar_vgg16", "cifar_mobilenetv2",
           "cifar_shufflenetv2"]
    out = [Entry(n, "cnn") for n in cnn] + [Entry("cifar_vit", "cifar_vit"), Entry("yolov8n", "yolo")]
    out += [Entry(f"hf_tiny_{a}", "hf_llm") for a in ("llama", "qwen2", "mistral")]
    out += [Entry("hf_tiny_gpt2", "hf_gpt2"), Entry("hf_tiny_bert", "hf_bert"), Entry("hf_tiny_vit", "hf_vit")]
    out += [Entry(f"hf_tiny_{a}", "hf_cnn") for a in ("resnet", "convnext", "mobilenetv2")]
    out += [Entry("hf_tiny_swin", "hf_swin"), Entry("smollm2_135m", "hf_llm", quick=False)]
    return out + [Entry(n, "cnn") for n in CASES]


def _perturb_norms(model: nn.Module, seed: int = 0) -> None:
    """Give normalisation layers non-trivial affine parameters and statistics (random-init ones are 1 and 0, which
    would hide a mis-sliced bias or a mis-mapped channel)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if "Norm" not in type(m).__name__:
                continue
            for name, t in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
                if t is None or not t.is_floating_point() or t.dim() != 1:
                    continue
                r = torch.rand(t.shape, generator=gen)
                t.copy_(0.5 + r if name in ("weight", "running_var") else 0.2 * (r - 0.5))


def build_entry(entry: Entry) -> Tuple[nn.Module, Any, Any, str]:
    """(model in eval mode, example inputs, check inputs from another seed and batch, weights kind)."""
    from prunekit.models import build, example_inputs

    if entry.name in CASES:
        torch.manual_seed(0)
        model = CASES[entry.name]().eval()
        _perturb_norms(model)
        shape = (8, 32) if entry.name == "case_rmsnorm" else (3, 32, 32)
        gen = torch.Generator().manual_seed(0)
        return model, torch.randn(2, *shape, generator=gen), torch.randn(3, *shape, generator=gen), "random"
    weights = "pretrained"
    try:
        model = build(entry.name, pretrained=True)
        if entry.name.startswith(("hf_tiny", "yolov8n", "cifar_vgg", "cifar_mobilenet", "cifar_shuffle")):
            weights = "random"  # these have no pretrained weights (build returns a random network)
    except Exception:  # noqa: BLE001 - no weights here: prune the random network
        model, weights = build(entry.name, pretrained=False), "random"
    model.eval()
    if weights == "random":
        _perturb_norms(model)
    if entry.name == "yolov8n":
        gen = torch.Generator().manual_seed(0)
        return model, torch.randn(1, 3, 256, 256, generator=gen), torch.randn(1, 3, 256, 256, generator=gen), weights
    seq = 16 if entry.name != "smollm2_135m" else 24
    return (model, example_inputs(entry.name, batch=2, seq_len=seq, seed=0),
            example_inputs(entry.name, batch=3, seq_len=seq - 5, seed=1), weights)


# ---------------------------------------------------------------- masked references, independent of either tool

def flat_outputs(out: Any) -> List[torch.Tensor]:
    """Every tensor of a model output (tensor, tuple, dict, Hugging Face ModelOutput), in order."""
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in flat_outputs(o)]
    return []


def run(model: nn.Module, inputs: Any) -> List[torch.Tensor]:
    with torch.no_grad():
        return flat_outputs(model(inputs))


def relative_error(out: List[torch.Tensor], ref: List[torch.Tensor]) -> float:
    """max |out - ref| / max |ref| over all floating outputs; raises ValueError when shapes differ."""
    if len(out) != len(ref) or any(a.shape != b.shape for a, b in zip(out, ref)):
        raise ValueError(f"output shapes differ: {[tuple(t.shape) for t in out]} vs {[tuple(t.shape) for t in ref]}")
    err = max((float((a.float() - b.float()).abs().max()) for a, b in zip(out, ref) if a.is_floating_point()),
              default=0.0)
    scale = max((float(b.float().abs().max()) for b in ref if b.is_floating_point()), default=0.0)
    return err / max(scale, 1e-12)


def _decode(values: torch.Tensor, full: int) -> Optional[torch.Tensor]:
    """Kept positions from surviving codes ``position + 1``; a constant rescale (RMSNorm weight fix-up) is undone."""
    for scale in (1.0, (full / max(values.numel(), 1)) ** 0.5):
        pos = values.double() / scale - 1.0
        rounded = pos.round()
        if bool(((pos - rounded).abs() < 1e-3).all()):
            idx = rounded.long()
            if bool((idx >= 0).all() and (idx < full).all()) and bool((idx[1:] > idx[:-1]).all()):
                return idx
    return None


def kept_positions(original: nn.Module, pruned: nn.Module, replay: Callable[[nn.Module], nn.Module]
                   ) -> Optional[Dict[str, Dict[int, torch.Tensor]]]:
    """Which positions of each tensor a pruning kept: {state name: {dim: kept positions}}, or None if unreadable.

    The pruning is replayed (by `replay`, on a copy) once per pruned dim with every floating tensor holding its
    positions along that dim as values; the surviving values name the kept positions.
    """
    before = {k: v for k, v in original.state_dict().items() if v.is_floating_point()}
    after = pruned.state_dict()
    dims = sorted({d for k, v in before.items() if k in after for d in range(v.dim())
                   if after[k].shape[d] != v.shape[d]})
    kept: Dict[str, Dict[int, torch.Tensor]] = {}
    for d in dims:
        coded = copy.deepcopy(original)
        with torch.no_grad():
            for t in coded.state_dict(keep_vars=True).values():
                if t.is_floating_point() and t.dim() > d:
                    shape = [-1 if i == d else 1 for i in range(t.dim())]
                    t.copy_(torch.arange(1, t.shape[d] + 1, dtype=t.dtype).reshape(shape).expand_as(t))
        state = replay(coded).state_dict()
        for k, v in before.items():
            if v.dim() > d and k in state and state[k].shape[d] != v.shape[d]:
                vec = state[k].movedim(d, 0).reshape(state[k].shape[d], -1)[:, 0]
                idx = _decode(vec, v.shape[d])
                if idx is None:
                    return None
                kept.setdefault(k, {})[d] = idx
    return kept


def _tensor_by_name(model: nn.Module, name: str) -> torch.Tensor:
    mod, _, attr = name.rpartition(".")
    return getattr(model.get_submodule(mod) if mod else model, attr)


def masked_reference(original: nn.Module, kept: Dict[str, Dict[int, torch.Tensor]]) -> nn.Module:
    """The original with every removed position zeroed (running variances set to 1)."""
    masked = copy.deepcopy(original)
    with torch.no_grad():
        for name, per_dim in kept.items():
            t = _tensor_by_name(masked, name)
            for d, idx in per_dim.items():
                removed = torch.ones(t.shape[d], dtype=torch.bool)
                removed[idx] = False
                t.index_fill_(d, removed.nonzero().flatten(), 1.0 if name.endswith("running_var") else 0.0)
    return masked


class KeptNorm(nn.Module):
    """A LayerNorm/RMSNorm computed over the kept channels only (zeros elsewhere): what a pruned norm computes."""

    def __init__(self, inner: nn.Module, keep: torch.Tensor, dim: int):
        super().__init__()
        self.inner, self.dim = inner, dim
        self.register_buffer("keep", keep)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = torch.zeros_like(x)
        return out.index_copy(self.dim, self.keep, self.inner(x.index_select(self.dim, self.keep), *args, **kwargs))


def renormalised_reference(original: nn.Module, kept: Dict[str, Dict[int, torch.Tensor]]) -> Optional[nn.Module]:
    """The masked original whose pruned LayerNorms/RMSNorms average over the kept channels; None if none was pruned."""
    masked = masked_reference(original, kept)
    swaps = []
    for name, m in masked.named_modules():
        kind = type(m).__name__
        if "Norm" not in kind or any(s in kind for s in ("BatchNorm", "GroupNorm", "InstanceNorm")):
            continue
        keep = kept.get(f"{name}.weight", {}).get(0)
        if keep is None:
            continue
        inner = copy.deepcopy(original.get_submodule(name))
        for pname, p in list(inner.named_parameters(recurse=False)):
            setattr(inner, pname, nn.Parameter(p.data[keep].clone()))
        if hasattr(inner, "normalized_shape"):
            inner.normalized_shape = (keep.numel(),)
        swaps.append((name, KeptNorm(inner, keep, 1 if getattr(m, "data_format", "") == "channels_first" else -1)))
    for name, new in swaps:
        parent, _, attr = name.rpartition(".")
        setattr(masked.get_submodule(parent) if parent else masked, attr, new)
    return masked if swaps else None


def check_against_masked(original: nn.Module, pruned: nn.Module, replay: Callable[[nn.Module], nn.Module],
                         inputs: Any) -> Dict[str, Any]:
    """Compare `pruned` with the masked original (and, if needed, the renormalised one) on `inputs`."""
    kept = kept_positions(original, pruned, replay)
    if kept is None:
        return {"error": None, "note": "removed positions could not be read back"}
    out = run(pruned, inputs)
    try:
        err = relative_error(out, run(masked_reference(original, kept), inputs))
    except ValueError as exc:
        ref = run(masked_reference(original, kept), inputs)
        same = [(a, b) for a, b in zip(out, ref) if a.shape == b.shape]
        note = str(exc)
        if same:
            note += f"; relative error on the outputs that kept their shape: " \
                    f"{relative_error([a for a, _ in same], [b for _, b in same]):.3g}"
        return {"error": None, "shape_changed": True, "note": note}
    result: Dict[str, Any] = {"error": err}
    if err > TOLERANCE:
        ref = renormalised_reference(original, kept)
        if ref is not None:
            result["renormalised_error"] = relative_error(out, run(ref, inputs))
    return result


def classify(check: Dict[str, Any]) -> str:
    if check.get("shape_changed"):
        return "output shape changed"
    if check["error"] is None:
        return "pruned (unverified)"
    if check["error"] <= TOLERANCE:
        return "pruned"
    if check.get("renormalised_error") is not None and check["renormalised_error"] <= TOLERANCE:
        return "pruned (inexact: norm statistics)"
    return "SILENTLY WRONG"


# ------------------------------------------------------------------------------------------------------ the tools

@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise TimeoutError inside the block after `seconds` (SIGALRM; main thread only)."""
    def handler(signum, frame):
        raise TimeoutError(f"did not finish within {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _sizes(model: nn.Module, inputs: Any) -> Tuple[int, int]:
    """(parameters, MACs); MACs with the MultiheadAttention fast path off, which FlopCounterMode cannot see into."""
    from prunekit.metrics.macs import count_macs
    from prunekit.metrics.params import count_parameters

    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        return count_parameters(model), count_macs(model, inputs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:300]}"


def _finish(row: Dict[str, Any], original: nn.Module, pruned: nn.Module, replay, x: Any, x_check: Any) -> None:
    """Run the pruned model on new inputs, count its size, check it against the masked original."""
    try:
        run(pruned, x_check)
        row["params_after"], row["macs_after"] = _sizes(pruned, x)
    except Exception as exc:  # noqa: BLE001 - a pruned model that does not run is a crash of the tool
        row.update(status="crashed", reason=f"pruned model does not run: {_short(exc)}")
        return
    if row["params_after"] == row["params_before"] and row["macs_after"] == row["macs_before"]:
        row["status"] = "not pruned"
        return
    try:
        check = check_against_masked(original, pruned, replay, x_check)
    except Exception as exc:  # noqa: BLE001 - no reference: the row says so instead of guessing
        check = {"error": None, "note": f"masked reference failed: {_short(exc)}"}
    row.update(status=classify(check), verify_error=check["error"],
               renormalised_error=check.get("renormalised_error"), reason=check.get("note", row.get("reason", "")))


def run_prunekit(model: nn.Module, x: Any, x_check: Any) -> Dict[str, Any]:
    import prunekit
    from prunekit.errors import ConfigError, UnsupportedOperationError

    row: Dict[str, Any] = {"tool": "prunekit"}
    row["params_before"], row["macs_before"] = _sizes(model, x)
    start = time.perf_counter()
    try:
        analysis = prunekit.analyze(model, x)
        row["groups_prunable"], row["groups_refused"] = len(analysis.prunable()), len(analysis.refused())
        if not analysis.prunable():
            reasons = sorted({r for g in analysis.refused() for r in g.reasons})
            row.update(status="refused", reason="; ".join(reasons[:3]), seconds=time.perf_counter() - start)
            return row
        plan = prunekit.plan(model, x, ratio=0.5, analysis=analysis)
        pruned = prunekit.apply(model, plan, x, analysis=analysis)
    except UnsupportedOperationError as exc:
        row.update(status="refused", reason=_short(exc), seconds=time.perf_counter() - start)
        return row
    except ConfigError as exc:
        status = "crashed" if "verification failed" in str(exc) else "refused"
        row.update(status=status, reason=_short(exc), seconds=time.perf_counter() - start)
        return row
    except Exception as exc:  # noqa: BLE001 - an engine crash is a result of this benchmark
        row.update(status="crashed", reason=_short(exc), traceback=traceback.format_exc(limit=-6),
                   seconds=time.perf_counter() - start)
        return row
    row["seconds"] = time.perf_counter() - start
    row["self_reported_error"] = pruned.prunekit_verification.relative_error
    row["reason"] = "; ".join(sorted({r for g in analysis.refused() for r in g.reasons})[:2])
    replay = lambda coded: prunekit.apply(coded, plan, x, analysis=analysis, verify=False)  # noqa: E731
    _finish(row, model, pruned, replay, x, x_check)
    return row


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

GOOD = ("pruned", "pruned (inexact: norm statistics)")


def summarise(rows: List[Dict[str, Any]]) -> Tuple[Dict[str, Dict[str, int]], List[Dict[str, Any]]]:
    """Counts per tool and status, and the targets."""
    counts: Dict[str, Dict[str, int]] = {}
    for r in rows:
        counts.setdefault(r["tool"], {}).setdefault(r["status"], 0)
        counts[r["tool"]][r["status"]] += 1
    by_model: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for r in rows:
        by_model.setdefault(r["model"], {})[r["tool"]] = r
    failures = 0
    for pair in by_model.values():
        pk, other = pair.get("prunekit"), pair.get("torch-pruning", {})
        if pk is None or pk["status"] == "missing":
            continue
        gave_up = pk["status"] in ("refused", "not pruned") and other.get("status") in GOOD
        if pk["status"] in ("crashed", "timed out") or gave_up:
            failures += 1
    wrong = counts.get("prunekit", {}).get("SILENTLY WRONG", 0)
    targets = [target("prunekit_silently_wrong", wrong, "<=", 0),
               target("prunekit_failures_with_correct_pruning", failures, "<=", 0)]
    return counts, targets


COLUMNS = ["model", "tool", "status", "verify err", "params before", "params after", "MACs before", "MACs after", "s"]


def _cells(r: Dict[str, Any]) -> List[Any]:
    err = r.get("verify_error")
    if err is None and r.get("renormalised_error") is None:
        err = "n/a"
    return [r["model"], r["tool"], r["status"], err, r.get("params_before"), r.get("params_after"),
            r.get("macs_before"), r.get("macs_after"), r.get("seconds")]


def markdown(rows: List[Dict[str, Any]], counts: Dict[str, Dict[str, int]], targets: List[Dict[str, Any]],
             payload: Dict[str, Any]) -> str:
    """The results page section: one line per model, the two tools side by side."""
    from _common import doc_command, fmt

    env = payload["environment"]
    lines = [f"Generated by `{doc_command(payload['command'])}` (torch {env.get('torch')}, transformers {env.get('transformers')}, "
             f"torch-pruning {env.get('torch-pruning')}). 50% of the channels of every group, uniform, L1. "
             "*err* is the relative max error of the pruned model against the masked original (removed positions "
             "zeroed) on inputs not used to prune, tolerance "
             f"{TOLERANCE:g}; the removed positions are read back independently of either tool. *inexact: norm "
             "statistics* means the model equals a reference whose pruned LayerNorms/RMSNorms average over the kept "
             "channels only. *s*: seconds to prune (prunekit: analyze + plan + verified apply; Torch-Pruning: "
             "pruner + step).", ""]
    head = ["model", "params", "MACs", "prunekit", "err", "params after", "MACs after", "s",
            "Torch-Pruning", "err", "params after", "MACs after", "s", "Torch-Pruning note"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_model: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for r in rows:
        by_model.setdefault(r["model"], {})[r["tool"]] = r
    for model, pair in by_model.items():
        pk, tp = pair.get("prunekit", {}), pair.get("torch-pruning", {})
        cells = [model, fmt(pk.get("params_before")), fmt(pk.get("macs_before"))]
        for r in (pk, tp):
            status = r.get("status", "-")
            status = f"**{status}**" if status in ("SILENTLY WRONG", "crashed", "timed out") else status
            err = r.get("verify_error")
            cells += [status, fmt(err, 2) if err is not None else "n/a", fmt(r.get("params_after")),
                      fmt(r.get("macs_after")), fmt(r.get("seconds"), 3)]
        note = "" if tp.get("status") in GOOD else str(tp.get("reason", "") or "")
        cells.append(note.replace("|", "/").replace("\n", " ")[:140])
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Counts: " + "; ".join(f"{tool}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
                                          for tool, c in counts.items()), ""]
    lines += [f"- {t['name']} = {t['value']} (target {t['op']} {t['target']}): {'met' if t['passed'] else 'MISSED'}"
              for t in targets]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    import warnings

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None, help="write results to this JSON file")
    parser.add_argument("--quick", action="store_true", help="skip the real-weights SmolLM2-135M")
    parser.add_argument("--models", default="", help="comma-separated subset of the zoo")
    parser.add_argument("--docs", default=None, help="markdown file whose engine_zoo section is rewritten "
                                                     "(default docs/results_engine.md on a full-zoo run)")
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    parser.add_argument("--tp-limit", type=float, default=None,
                        help=f"seconds before a Torch-Pruning run is stopped (default {TP_TIME_LIMIT_S:g}, "
                             "60 with --quick)")
    args = parser.parse_args(argv)
    tp_limit = args.tp_limit or (60.0 if args.quick else TP_TIME_LIMIT_S)
    argv_used = sys.argv[1:] if argv is None else list(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    start = time.perf_counter()
    wanted = [m for m in args.models.split(",") if m]
    entries = [e for e in zoo() if (e.name in wanted if wanted else (e.quick or not args.quick))]
    unknown = sorted(set(wanted) - {e.name for e in entries})
    if unknown:
        parser.error(f"unknown zoo models: {', '.join(unknown)}; known: {', '.join(e.name for e in zoo())}")
    rows: List[Dict[str, Any]] = []
    for entry in entries:
        try:
            model, x, x_check, weights = build_entry(entry)
        except Exception as exc:  # noqa: BLE001 - a model that cannot be built here is reported, not fatal
            rows += [{"model": entry.name, "tool": t, "status": "missing", "reason": _short(exc)}
                     for t in ("prunekit", "torch-pruning")]
            continue
        for tool, fn in (("prunekit", lambda: run_prunekit(model, x, x_check)),
                         ("torch-pruning", lambda: run_torch_pruning(entry.family, model, x, x_check, tp_limit))):
            row = {"model": entry.name, "family": entry.family, "weights": weights, **fn()}
            rows.append(row)
            print(f"{entry.name:24s} {tool:14s} {row['status']:34s} err={row.get('verify_error')} "
                  f"{row.get('seconds', 0):.1f}s {str(row.get('reason', ''))[:100]}", flush=True)
    counts, targets = summarise(rows)
    print_table("engine zoo: prunekit vs Torch-Pruning at 50%", COLUMNS, [_cells(r) for r in rows],
                ["red" if r["status"] in ("SILENTLY WRONG", "crashed", "timed out") else None for r in rows])
    print_targets(targets)
    payload = report("engine_zoo", argv_used, start, rows, targets, counts=counts, tolerance=TOLERANCE)
    doc = args.docs if args.docs is not None else (str(DOC) if not wanted else "")
    if doc:
        update_doc_section(doc, "engine_zoo", "Engine zoo: prunekit vs Torch-Pruning",
                           markdown(rows, counts, targets, payload))
    if args.json:
        write_json(args.json, payload)
    return 0 if payload["all_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
