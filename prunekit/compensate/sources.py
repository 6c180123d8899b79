"""Where the moments come from: BatchNorm statistics and filters (data-free), or activations measured on images.

Both sources describe one layer: the original channels z_i = W_i x + b_i (BN folded into W, b) and the damaged
channels z̃_k = W̃_k x + b̃_k (input columns of pruned channels zeroed, earlier compensation folded in, weights
quantised), A = ReLU(z), Ã = ReLU(z̃).

* Data-free (`bn_moments`): z_i ~ N(beta_i, gamma_i^2) as BN promises; the input x is taken as white, so
  cov(z_i, z̃_k) is proportional to W_i . W̃_k with per-channel factors fixed by Var(z_i) = gamma_i^2, giving
  corr(z_i, z̃_k) = cos(W_i, W̃_k) and std(z̃_k) = |gamma_k| |W̃_k| / |W_k|; the bias correction makes E[z̃_k] =
  beta_k. Moments then follow from `moments.py`.
* Measured (`measured_moments`): the same quantities averaged over the layer's real inputs (recorded on the
  original model), with z̃ mean-matched to z (the measured counterpart of the bias correction). This is the upper
  bound of what the data-free estimate can reach.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .closed_form import Moments
from .moments import relu_cross_moment, relu_mean, relu_second_moment


def bn_output_std(bn: nn.Module) -> torch.Tensor:
    """[C] standard deviation of a BatchNorm's output when its running statistics hold, float64.

    The BN computes gamma (y - mu) / sqrt(var + eps) + beta, so with Var(y) = var the output deviation is
    |gamma| sqrt(var / (var + eps)), not |gamma|. The two differ where the running variance is comparable to eps:
    the nearly dead channels of deep blocks (ResNet-56 option B has layers where the median channel's factor is
    0.06), and treating those as N(beta, gamma^2) overstates their spread and their correlation with the rest.
    """
    var = bn.running_var.detach().double().clamp_min(0.0)
    return bn.weight.detach().double().abs() * torch.sqrt(var / (var + bn.eps))


def input_metric(weight_shape: torch.Tensor, channel_var: Optional[torch.Tensor], spatial_corr: float):
    """The input second-order model as a function ``inner(a, b) -> a M b^T`` on flattened filters [*, C_in * k].

    M = diag(channel variances) (x) R with R[s, t] = spatial_corr ** (L1 distance of kernel positions s and t):
    input channels independent with the variances the previous BN promises (1 where unknown), neighbouring pixels
    correlated. ``spatial_corr = 0`` and unit variances give the plain cosine of the spec (white input).
    """
    c_in = weight_shape[1]
    kernel = tuple(weight_shape[2:])
    grids = torch.meshgrid(*[torch.arange(k, dtype=torch.float64) for k in kernel], indexing="ij") if kernel else ()
    coords = torch.stack([g.reshape(-1) for g in grids], 1) if kernel else torch.zeros(1, 1, dtype=torch.float64)
    dist = (coords.unsqueeze(0) - coords.unsqueeze(1)).abs().sum(-1)
    R = torch.where(dist == 0, torch.ones_like(dist), torch.full_like(dist, float(spatial_corr)) ** dist)
    var = channel_var.double() if channel_var is not None else torch.ones(c_in, dtype=torch.float64)
    var = var.clamp_min(0.0)

    def inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a3 = a.reshape(a.shape[0], c_in, -1)
        b3 = b.reshape(b.shape[0], c_in, -1)
        left = torch.einsum("ias,st->iat", a3, R) * var.view(1, -1, 1)
        return left.flatten(1) @ b3.flatten(1).T

    return inner


def bn_moments(w_ref: torch.Tensor, w_new: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor,
               kept: torch.Tensor, partners: str, inner=None) -> Moments:
    """Data-free moments of one layer.

    Args:
        w_ref: [C, n] folded original filters (flattened). w_new: [C, n] folded damaged filters.
        beta, gamma: [C] the BatchNorm's shift and the deviation of its output (`bn_output_std`; the sign of a
            negative scale is carried by the folded filters, only |gamma| is used).
        kept: [K] long indices of the kept channels.
        partners: ``"single"`` (diagonal gram) or ``"all"`` (full gram).
        inner: the input model ``inner(a, b) = a M b^T`` (`input_metric`); None: M = I (white input).
    """
    w_ref, w_new = w_ref.double(), w_new.double()
    inner = inner or (lambda a, b: a @ b.T)
    beta, std = beta.double(), gamma.double().abs()
    wk = w_new[kept]
    n_ref = torch.diagonal(inner(w_ref, w_ref)).clamp_min(0).sqrt()
    n_new = torch.diagonal(inner(wk, wk)).clamp_min(0).sqrt()
    std_d = torch.where(n_ref[kept] > 0, std[kept] * n_new / n_ref[kept].clamp_min(1e-30), torch.zeros_like(n_new))
    corr = inner(w_ref, wk) / (n_ref.unsqueeze(1) * n_new.unsqueeze(0)).clamp_min(1e-30)
    cross = relu_cross_moment(beta.unsqueeze(1), std.unsqueeze(1), beta[kept].unsqueeze(0), std_d.unsqueeze(0),
                              corr)
    second_d = relu_second_moment(beta[kept], std_d)
    if partners == "all":
        cos = inner(wk, wk) / (n_new.unsqueeze(1) * n_new.unsqueeze(0)).clamp_min(1e-30)
        gram = relu_cross_moment(beta[kept].unsqueeze(1), std_d.unsqueeze(1), beta[kept].unsqueeze(0),
                                 std_d.unsqueeze(0), cos)
        gram[torch.arange(kept.numel()), torch.arange(kept.numel())] = second_d
    else:
        gram = second_d
    return Moments(relu_mean(beta, std), relu_second_moment(beta, std), cross, gram, relu_mean(beta[kept], std_d))


def run_layer(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """`layer`'s operation (conv with its stride / padding / dilation, or linear) with other weights: [B, C, ...]."""
    weight, bias = weight.to(x.dtype), bias.to(x.dtype)
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, bias)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[weight.dim() - 2]
    if layer.padding_mode != "zeros":
        x = F.pad(x, layer._reversed_padding_repeated_twice, mode=layer.padding_mode)
        return conv(x, weight, bias, layer.stride, 0, layer.dilation, layer.groups)
    return conv(x, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups)


def _rows(z: torch.Tensor) -> torch.Tensor:
    """[B, C, ...] -> [B * positions, C]."""
    return z.movedim(1, -1).reshape(-1, z.shape[1]) if z.dim() > 2 else z


def measured_moments(layer: nn.Module, inputs: Iterable[torch.Tensor], w_ref: torch.Tensor, b_ref: torch.Tensor,
                     w_new: torch.Tensor, b_new: torch.Tensor, kept: torch.Tensor, partners: str) -> Moments:
    """Moments of one layer measured on its recorded real inputs (each [B, C_in, ...]); weights unflattened."""
    sums: Dict[str, torch.Tensor] = {}
    count = 0
    zs: List[tuple] = []
    shift = None
    with torch.no_grad():
        for x in inputs:  # first pass: the mean shift the bias correction removes
            z, zd = _rows(run_layer(layer, x, w_ref, b_ref)).double(), _rows(run_layer(layer, x, w_new, b_new)).double()
            zs.append((z, zd))
            d = (z - zd).sum(0)
            shift = d if shift is None else shift + d
            count += z.shape[0]
        shift = shift / max(count, 1)
        for z, zd in zs:
            a, ad = z.clamp_min(0), (zd + shift).clamp_min(0)[:, kept]
            parts = {"mean_a": a.sum(0), "second_a": (a * a).sum(0), "cross": a.T @ ad, "mean_d": ad.sum(0),
                     "gram": ad.T @ ad if partners == "all" else (ad * ad).sum(0)}
            for k, v in parts.items():
                sums[k] = v if k not in sums else sums[k] + v
    return Moments(**{k: v / max(count, 1) for k, v in sums.items()})


class InputRecorder:
    """Forward pre-hooks that keep the inputs of chosen layers and the per-channel input means of every conv /
    linear, over a few batches of the *original* model (the measured-moment variant and the error figures only).

    Use as a context manager around forward passes; `inputs[name]` is a list of [B, C_in, ...] tensors and
    `means[name]` a [C_in] float64 mean (channel dim 1).
    """

    def __init__(self, model: nn.Module, keep: Iterable[str]):
        self.model, self.keep = model, set(keep)
        self.inputs: Dict[str, List[torch.Tensor]] = {n: [] for n in self.keep}
        self._sum: Dict[str, torch.Tensor] = {}
        self._count: Dict[str, int] = {}
        self._handles: List = []

    def _hook(self, name: str):
        def hook(module, args):
            x = args[0].detach()
            if name in self.keep:
                self.inputs[name].append(x)
            rows = (x.reshape(-1, x.shape[-1]) if isinstance(module, nn.Linear) else _rows(x)).double()
            self._sum[name] = rows.sum(0) + self._sum.get(name, 0.0)
            self._count[name] = rows.shape[0] + self._count.get(name, 0)
        return hook

    def __enter__(self) -> "InputRecorder":
        for name, m in self.model.named_modules():
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
                self._handles.append(m.register_forward_pre_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    @property
    def means(self) -> Dict[str, torch.Tensor]:
        return {k: v / self._count[k] for k, v in self._sum.items()}


def record_inputs(model: nn.Module, batches: Iterable[torch.Tensor], keep: Iterable[str],
                  forward: Optional[callable] = None) -> InputRecorder:
    """Run `model` (eval, no grad) over `batches` with an `InputRecorder`; returns the recorder."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), InputRecorder(model, keep) as rec:
            for x in batches:
                (forward or model)(x)
    finally:
        model.train(was)
    return rec
