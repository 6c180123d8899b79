"""Tool-independent checks for benchmarks/engine_zoo.py: read back the positions a tool removed, build the masked
(and renormalised) original, compare outputs and classify the result.
"""
from __future__ import annotations

import contextlib
import copy
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))


TOLERANCE = 1e-4  # relative max error allowed against the masked original

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
