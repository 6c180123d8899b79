"""What a sparse model costs: dense MACs against the MACs left after skipping masked-out weights, and (on a CUDA
GPU only) PyTorch's semi-structured 2:4 kernels timed against dense ones.

Unstructured and N:M sparsity make a model faster only with sparse kernels: on a CPU there are none here, so only the
MAC counts are reported. `semi_structured_speed` runs solely when CUDA is present and says so otherwise.
"""
from __future__ import annotations

from typing import Any, Dict

import torch
from torch import nn

from ...metrics.macs import count_macs
from .artifact import MaskSet
from .targets import get_module


def sparse_macs(model: nn.Module, inputs: Any, masks: MaskSet) -> Dict[str, int]:
    """Dense MACs of one forward on `inputs` and the MACs of the kept weights only.

    Each masked weight of shape [O, ...] is used once per output position (a token, a pixel), so its MACs are
    ``positions * numel``; the kept share is ``positions * kept``. Other MACs (attention products) stay.

    Args:
        model: the model (masks baked or not; only shapes matter).
        inputs: one example batch (tensor or dict of tensors).
        masks: the hard masks.

    Returns:
        ``{"dense_macs", "sparse_macs"}`` for the batch.
    """
    positions: Dict[str, int] = {}
    handles = []
    for name, e in masks.entries.items():
        module = get_module(model, e.module)

        def hook(mod, args, kwargs, out, name=name, e=e):
            x = args[0] if args else kwargs.get("query", kwargs.get("input"))
            if e.param == "weight" and isinstance(out, torch.Tensor):  # Linear / Conv: out [..., O, ...]
                dim = -1 if isinstance(mod, nn.Linear) else 1
                positions[name] = out.numel() // out.shape[dim]
            else:  # attention input projections: one product per token, and the same count for the output
                # projection, whose weight nn.MultiheadAttention uses without calling the out_proj module
                positions[name] = x.numel() // x.shape[-1]
                out_name = f"{e.module}.out_proj.weight" if e.module else "out_proj.weight"
                positions.setdefault(out_name, positions[name])

        handles.append(module.register_forward_hook(hook, with_kwargs=True))
    try:
        dense = count_macs(model, **inputs) if isinstance(inputs, dict) else count_macs(model, inputs)
    finally:
        for h in handles:
            h.remove()
    saved = sum(positions.get(name, 0) * (m.numel() - int(m.sum())) for name, m in masks.masks.items())
    return {"dense_macs": int(dense), "sparse_macs": int(dense - saved)}


def semi_structured_speed(masks: MaskSet, model: nn.Module, tokens: int = 4096, repeats: int = 50) -> Dict[str, Any]:
    """Time every 2:4-masked ``nn.Linear`` as a dense fp16 matmul and as a `to_sparse_semi_structured` one.

    Only on CUDA (sparse tensor cores); on a CPU it returns ``{"available": False, "reason": ...}`` without running.

    Returns:
        ``{"available", "layers": [{"name", "dense_ms", "sparse_ms"}], "dense_ms", "sparse_ms", "speedup"}``.
    """
    if not torch.cuda.is_available():
        return {"available": False, "reason": "no CUDA device: 2:4 speed needs a GPU with sparse tensor cores; "
                                              "MACs only"}
    from torch.sparse import to_sparse_semi_structured

    layers = []
    for name, e in masks.entries.items():
        module = get_module(model, e.module)
        if not (isinstance(module, nn.Linear) and e.pattern == "nm" and (e.n, e.m) == (2, 4)):
            continue
        w = (module.weight.detach() * masks.masks[name]).half().cuda()
        x = torch.randn(tokens, w.shape[1], dtype=torch.half, device="cuda")
        try:
            ws = to_sparse_semi_structured(w)
        except (RuntimeError, ValueError) as exc:  # shapes the kernels refuse (too small)
            layers.append({"name": name, "error": str(exc)[:120]})
            continue
        layers.append({"name": name, "dense_ms": _cuda_ms(lambda: torch.nn.functional.linear(x, w), repeats),
                       "sparse_ms": _cuda_ms(lambda: torch.nn.functional.linear(x, ws), repeats)})
    timed = [row for row in layers if "dense_ms" in row]
    dense = sum(r["dense_ms"] for r in timed)
    sparse = sum(r["sparse_ms"] for r in timed)
    return {"available": True, "layers": layers, "dense_ms": dense, "sparse_ms": sparse,
            "speedup": dense / sparse if sparse else None}


def _cuda_ms(fn, repeats: int) -> float:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats
