"""Fitting FTWT's predictors on cached features: a cheap, accurate start for short training budgets.

A predictor sees only its layer's input pooled over space (at most a few hundred numbers), and its labels come from
the layer's output, so one forward over a few hundred training images gives each predictor a whole data set: its
pooled inputs ``[N, C_in]`` and labels ``[N, C_out]``. Each predictor is then fitted full-batch on that cache (the
same BCE as FTWT's mask loss, many optimizer steps for the price of one forward).

Rounds: the first caches the unmasked model's features; later ones run the model with the masks of the predictors
fitted so far, so every layer learns from the inputs it will see at inference (earlier layers masked by their own
predictions), as in FTWT's masked training.

This is an addition to the paper (its predictors learn only during masked training, over 200 epochs): under a CPU
budget of a few dozen steps the predictors would otherwise stay near their all-on initialisation.
"""
from __future__ import annotations

from typing import Dict, List

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from ..errors import ConfigError
from .model import DynamicChannelModel, predictor_key


@torch.no_grad()
def cache_features(dyn: DynamicChannelModel, dataset: Dataset, mask_source: str,
                   batch_size: int = 128) -> Dict[str, List[torch.Tensor]]:
    """Each site's pooled predictor inputs and labels over `dataset` (model in eval mode, masks from `mask_source`).

    Returns:
        ``{site conv: [pooled [N, C_in], labels [N, C_out]]}``.
    """
    flags = (dyn.training, dyn.mask_source, dyn.supervise)
    pooled: Dict[str, List[torch.Tensor]] = {s.conv: [] for s in dyn.sites}
    labels: Dict[str, List[torch.Tensor]] = {s.conv: [] for s in dyn.sites}
    handles = [dyn.predictors[predictor_key(s.conv)].register_forward_pre_hook(
        lambda mod, args, name=s.conv: pooled[name].append(args[0].flatten(2).mean(dim=2)))
        for s in dyn.sites]
    dyn.eval()
    dyn.mask_source, dyn.supervise = mask_source, False
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            dyn(batch[0])
            for name, gt in dyn.last_labels.items():
                labels[name].append(gt)
    finally:
        for h in handles:
            h.remove()
        dyn.train(flags[0])
        dyn.mask_source, dyn.supervise = flags[1], flags[2]
    return {name: [torch.cat(pooled[name]), torch.cat(labels[name])] for name in pooled}


def fit_predictors(dyn: DynamicChannelModel, dataset: Dataset, images: int = 512, rounds: int = 2,
                   iters: int = 300, lr: float = 0.05, seed: int = 0) -> Dict[str, float]:
    """Fit every predictor of `dyn` to its labels on cached features (in place; the backbone is not touched).

    Args:
        dyn: the dynamic model.
        dataset: training items ``(image, label)``; `images` of them are drawn at random (seeded).
        images: how many images to cache. rounds: caching rounds (the first unmasked, then with predicted masks).
        iters: full-batch Adam steps per predictor and round. lr: Adam's learning rate.

    Returns:
        ``{site conv: agreement of the fitted predictor with its labels on the last cache}``.
    """
    if images < 1 or rounds < 1 or iters < 1 or lr <= 0:
        raise ConfigError("dynamic fit: images, rounds and iters must be >= 1 and lr > 0")
    index = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:images].tolist()
    subset = Subset(dataset, index)
    agreement: Dict[str, float] = {}
    for r in range(rounds):
        cache = cache_features(dyn, subset, "none" if r == 0 else "predicted")
        names = list(cache)
        agreement = dict(zip(names, _fit_all([dyn.predictors[predictor_key(n)] for n in names],
                                             [cache[n][0] for n in names], [cache[n][1] for n in names], iters, lr)))
    return agreement


def _fit_all(predictors: List[torch.nn.Module], xs: List[torch.Tensor], ys: List[torch.Tensor], iters: int,
             lr: float) -> List[float]:
    """Full-batch Adam on FTWT's mask loss (BCE summed over filters, mean over inputs) for all predictors at once.

    The predictors differ in width, so their linear layers are zero-padded into one batched ``[S, D, O]`` problem:
    padded inputs are zero (their weights get no gradient) and padded outputs are left out of the loss, and as Adam
    works per parameter, the joint fit equals fitting each predictor alone.

    Args:
        predictors: `MaskPredictor` modules (their ``fc`` is overwritten).
        xs: per predictor, pooled inputs ``[N, D_s]``. ys: labels ``[N, O_s]``.

    Returns:
        per predictor, the agreement of its fitted masks with the labels.
    """
    n = xs[0].shape[0]
    d, o = max(x.shape[1] for x in xs), max(y.shape[1] for y in ys)
    x = torch.zeros(len(xs), n, d)
    y = torch.zeros(len(xs), n, o)
    valid = torch.zeros(len(xs), 1, o)
    weight = torch.zeros(len(xs), d, o)
    bias = torch.zeros(len(xs), 1, o)
    for i, (p, xi, yi) in enumerate(zip(predictors, xs, ys)):
        feats = xi.softmax(dim=1) if p.softmax else xi  # the predictor's own softmax, over its real channels only
        x[i, :, :xi.shape[1]], y[i, :, :yi.shape[1]], valid[i, :, :yi.shape[1]] = feats, yi, 1.0
        weight[i, :xi.shape[1], :yi.shape[1]] = p.fc.weight.detach().t()
        bias[i, 0, :yi.shape[1]] = p.fc.bias.detach()
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer = torch.optim.Adam([weight, bias], lr=lr)
    with torch.enable_grad():
        for _ in range(iters):
            bce = F.binary_cross_entropy_with_logits(torch.baddbmm(bias, x, weight), y, reduction="none")
            loss = (bce * valid).sum() / n
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    agreement = []
    with torch.no_grad():
        hits = ((torch.baddbmm(bias, x, weight) > 0).float() == y).float() * valid
        for i, (p, xi, yi) in enumerate(zip(predictors, xs, ys)):
            p.fc.weight.copy_(weight[i, :xi.shape[1], :yi.shape[1]].t())
            p.fc.bias.copy_(bias[i, 0, :yi.shape[1]])
            agreement.append(float(hits[i].sum() / (n * yi.shape[1])))
    return agreement
