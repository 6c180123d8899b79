"""Layer-wise densities p_l at initialisation, one registered source per method (registry kind ``density``).

- ``snip``: |g * w| on one batch (Lee et al.);
- ``grasp``: w * (H g) with the logits divided by 200, keeping the largest (Wang et al.: GraSP removes the largest
  -w * Hg);
- ``synflow``: w * dR/dw with R = 1^T (prod |W_l|) 1 on an all-ones input, iterated 100 times on the exponential
  schedule d^(k/100), in double precision with BatchNorm in eval mode and |weights| (Tanaka et al.).
  These three keep the global top ``d`` fraction of the scores; p_l = kept_l / n_l, and the masks are returned too
  (the unstructured baseline of the PreCrop paper, v1).
- ``synexp``: the closed-form program of the revised paper (v2): maximise sum_l log p_l under the parameter and/or
  MACs budget, ``0 < p_l <= upper_l`` (water-filling, `synexp.synexp_densities`); data-free, no scores, no masks.

A source is ``fn(model, layers, request) -> DensityResult``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from ...errors import ConfigError
from ...registry import registry
from .layers import Layer

DENSITIES = registry("density")


@dataclass
class DensityRequest:
    """What a density source is asked for.

    Attributes:
        keep_params: fraction of the layers' weights kept (PAI methods need it), or None.
        keep_macs: fraction of the layers' MACs kept (``synexp`` only), or None.
        batch: ``(images [B, ...], labels [B])`` for SNIP / GraSP.
        input_shape: one example's shape (SynFlow's all-ones input).
        upper: layer name -> largest density allowed (> 1 in the reconfigure mode; default 1).
        options: source options (``iterations`` for SynFlow).
    """

    keep_params: Optional[float] = None
    keep_macs: Optional[float] = None
    batch: Any = None
    input_shape: Optional[tuple] = None
    upper: Dict[str, float] = field(default_factory=dict)
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class DensityResult:
    """Densities p_l per layer name, plus the unstructured keep-masks when the source scores weights."""

    densities: Dict[str, float]
    masks: Optional[Dict[str, torch.Tensor]] = None
    source: str = ""


def _weights(model: nn.Module, layers: List[Layer]) -> List[torch.Tensor]:
    modules = dict(model.named_modules())
    return [modules[layer.name].weight for layer in layers]


def global_topk_masks(scores: Dict[str, torch.Tensor], density: float) -> Dict[str, torch.Tensor]:
    """Keep the global top ``round(density * N)`` scores (ties broken by position): {layer: bool mask}."""
    names = list(scores)
    flat = torch.cat([scores[n].detach().reshape(-1).double() for n in names])
    k = max(1, int(round(density * flat.numel())))
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[torch.topk(flat, k, sorted=False).indices] = True
    out, start = {}, 0
    for n in names:
        size = scores[n].numel()
        out[n] = keep[start:start + size].reshape(scores[n].shape)
        start += size
    return out


def _densities(masks: Dict[str, torch.Tensor]) -> Dict[str, float]:
    return {n: float(m.sum()) / m.numel() for n, m in masks.items()}


def _need_params(request: DensityRequest, source: str) -> float:
    if request.keep_params is None:
        raise ConfigError(f"density source '{source}' keeps a fraction of the weights: set keep_params (a MACs "
                          f"budget alone needs the 'synexp' source)")
    if not 0.0 < request.keep_params < 1.0:
        raise ConfigError(f"density source '{source}': keep_params must lie in (0, 1), got {request.keep_params}")
    return float(request.keep_params)


def _need_batch(request: DensityRequest, source: str):
    if request.batch is None:
        raise ConfigError(f"density source '{source}' needs one labelled batch (images, labels)")
    return request.batch


def _loss_grads(model: nn.Module, weights: List[torch.Tensor], batch, create_graph: bool = False,
                temperature: float = 1.0):
    images, labels = batch
    loss = nn.functional.cross_entropy(model(images) / temperature, labels)
    return torch.autograd.grad(loss, weights, create_graph=create_graph)


@DENSITIES.register("snip", help="SNIP |g*w| on one batch at init, global top-d (PreCrop v1)")
def snip(model: nn.Module, layers: List[Layer], request: DensityRequest) -> DensityResult:
    d = _need_params(request, "snip")
    work = copy.deepcopy(model).train()
    weights = _weights(work, layers)
    grads = _loss_grads(work, weights, _need_batch(request, "snip"))
    scores = {layer.name: (g * w).abs().detach() for layer, w, g in zip(layers, weights, grads)}
    masks = global_topk_masks(scores, d)
    return DensityResult(_densities(masks), masks, "snip")


@DENSITIES.register("grasp", help="GraSP w*(Hg) on one batch at init (logits / 200), global top-d")
def grasp(model: nn.Module, layers: List[Layer], request: DensityRequest) -> DensityResult:
    d = _need_params(request, "grasp")
    batch = _need_batch(request, "grasp")
    work = copy.deepcopy(model).train()
    weights = _weights(work, layers)
    # GraSP divides the logits by a temperature (200 in the authors' code) so the Hessian term is not dominated by
    # saturated softmax outputs
    temperature = float(request.options.get("grasp_temperature", 200.0))
    g = [t.detach() for t in _loss_grads(work, weights, batch, temperature=temperature)]
    g2 = _loss_grads(work, weights, batch, create_graph=True, temperature=temperature)
    z = sum((a * b).sum() for a, b in zip(g2, g))
    hg = torch.autograd.grad(z, weights)
    # GraSP removes the largest -w * Hg, i.e. keeps the largest w * Hg
    scores = {layer.name: (w * h).detach() for layer, w, h in zip(layers, weights, hg)}
    masks = global_topk_masks(scores, d)
    return DensityResult(_densities(masks), masks, "grasp")


@DENSITIES.register("synflow", help="SynFlow data-free iterative scores (100 rounds, exponential schedule)")
def synflow(model: nn.Module, layers: List[Layer], request: DensityRequest) -> DensityResult:
    d = _need_params(request, "synflow")
    if request.input_shape is None:
        raise ConfigError("density source 'synflow' needs the input shape (for its all-ones input)")
    iterations = int(request.options.get("iterations", 100))
    if iterations < 1:
        raise ConfigError(f"density source 'synflow': iterations must be >= 1, got {iterations}")
    # double precision, BN in eval mode and |weights|: the product of |W| overflows float32 in deep nets and signs
    # would cancel the path sums (methods.md section 8 pitfalls)
    work = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for p in work.state_dict().values():
            if p.is_floating_point():
                p.abs_()
    weights = _weights(work, layers)
    originals = [w.detach().clone() for w in weights]
    masks = {layer.name: torch.ones_like(w, dtype=torch.bool) for layer, w in zip(layers, weights)}
    ones = torch.ones((1, *request.input_shape), dtype=torch.double)
    for k in range(1, iterations + 1):
        with torch.no_grad():
            for layer, w, w0 in zip(layers, weights, originals):
                w.copy_(w0 * masks[layer.name])
        out = work(ones)
        grads = torch.autograd.grad(out.sum(), weights)
        scores = {layer.name: (w * g).detach().abs() for layer, w, g in zip(layers, weights, grads)}
        masks = global_topk_masks(scores, d ** (k / iterations))
    return DensityResult(_densities(masks), masks, "synflow")


@DENSITIES.register("synexp", help="SynExp closed form: max sum log p_l under a params and/or MACs budget (v2)")
def synexp(model: nn.Module, layers: List[Layer], request: DensityRequest) -> DensityResult:
    from .synexp import synexp_densities

    if request.keep_params is None and request.keep_macs is None:
        raise ConfigError("density source 'synexp' needs keep_params and/or keep_macs")
    return DensityResult(synexp_densities(layers, request.keep_params, request.keep_macs, request.upper),
                         None, "synexp")


def density_source(name: str) -> Callable[..., DensityResult]:
    """The registered density source `name` (``prunekit ls densities``)."""
    return DENSITIES.get(name)
