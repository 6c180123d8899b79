"""Latency of a model before and after pruning on each runtime the report shows (eager, onnxruntime)."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

from torch import nn


def runtime_latencies(original: nn.Module, pruned: nn.Module, inputs: Any, eager: Optional[Tuple[float, float]] = None,
                      warmup: int = 2, repeats: int = 10, threads: int = 1) -> Dict[str, Sequence[Any]]:
    """{runtime: (before ms, after ms)}; a runtime that cannot run the model gets (reason,) instead.

    Args:
        original / pruned: the two models (eval mode).
        inputs: one example tensor (other inputs: only `eager`, if given, is reported).
        eager: already measured eager medians (before, after), reused instead of timing again.
    """
    import torch

    from ..errors import PrunekitError
    from ..metrics.latency import eager_latency, onnxruntime_latency

    out: Dict[str, Sequence[Any]] = {}
    if eager is not None and None not in eager:
        out["eager"] = tuple(eager)
    if not isinstance(inputs, torch.Tensor):
        return out
    if "eager" not in out:
        out["eager"] = tuple(eager_latency(m, inputs, warmup, repeats, threads).median_ms for m in (original, pruned))
    try:
        out["onnxruntime"] = tuple(onnxruntime_latency(m, inputs, warmup, repeats, threads).median_ms
                                   for m in (original, pruned))
    except (PrunekitError, ImportError, RuntimeError, ValueError) as exc:
        out["onnxruntime"] = (f"not measured: {(str(exc).splitlines() or [type(exc).__name__])[0][:160]}",)
    except Exception as exc:  # noqa: BLE001 -- an exporter's internal error must not fail the prune it reports on
        out["onnxruntime"] = (f"not measured: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]}",)
    return out
