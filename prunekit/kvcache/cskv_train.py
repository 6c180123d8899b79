"""CSKV layer-wise training: fit each layer's low-rank K/V factors to reconstruct its keys and values.

The language model stays frozen and no language-model loss is used (``kvmse_lambda = 1`` in the official code):
for every layer, with ``x`` the attention input recorded on calibration text by the *original* model (so layers do
not see each other's errors), minimise::

    MSE(W_K x, up_K down_K x) + MSE(W_V x, up_V down_V x)

averaged over calibration tokens, uniformly (the paper) or weighted by the attention each token receives as a latent
(``weighting="attention"``, see `prunekit.kvcache.calibration`).
The paper writes the key term after RoPE; RoPE rotates each (2i, 2i+1) pair of a key by an angle that depends only on
its position, so it preserves squared errors and the two losses are equal. Factors start from ASVD (``init="asvd"``:
SVD of ``W diag(mean|x|^alpha)``) or a plain SVD, and are trained with Adam. Because the loss is quadratic in ``x``,
each float step uses the exact loss over all calibration tokens through ``E[x x^T]``; with ``bits < 16`` the latents
are fake-quantised (straight-through) as the cache will store them, on random batches of recorded inputs.

`save` writes ``factors.safetensors`` plus ``cskv.json`` into a folder; `load` reads them back without retraining.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional

import torch

from ..errors import CheckpointError, ConfigError
from ..io import atomic_write_text, load_tensors, read_json, save_tensors
from . import hf_compat
from .calibration import WEIGHTINGS, collect_attention_inputs
from .cskv import CSKVFactors, latent_ranks
from .quant import fake_quantize

FACTORS_FILE, META_FILE = "factors.safetensors", "cskv.json"


@dataclass
class TrainConfig:
    """Settings of the layer-wise training.

    Attributes:
        optimizer: ``"als"`` (alternating exact least-squares updates of the up and down factors on the same loss;
            float latents only) or ``"adam"`` (the official code's optimiser; required for ``bits < 16``).
        steps: iterations per layer (0: initialisation only); ALS converges in ~20, Adam in ~300.
        lr: Adam learning rate. batch_tokens: tokens per step of quantisation-aware training.
        init: ``"asvd"`` or ``"svd"``. alpha: ASVD exponent.
        bits: 16, or 8 / 4 for quantisation-aware training. window / group_size: the quantisation layout of the press.
        seed: sampling seed.
        allocation: ``"uniform"`` (the same K and V rank in every layer, as the paper) or ``"adaptive"`` (the same
            total latent channels, spread over layers and K/V where they remove the most reconstruction error; see
            `allocate_ranks`).
        key_weight: adaptive allocation only: how much a unit of relative key error counts against one of value
            error (key errors pass through the softmax's exponential).
        weighting: calibration token weights, ``"uniform"`` (the paper) or ``"attention"`` (each token weighted by
            the attention it receives as a latent; `prunekit.kvcache.calibration`). sink: the press's exact first
            tokens (given no weight by the attention weighting).
    """

    optimizer: str = "als"
    steps: int = 20
    lr: float = 3e-3
    batch_tokens: int = 1024
    init: str = "asvd"
    alpha: float = 0.5
    bits: int = 16
    window: int = 32
    group_size: int = 32
    seed: int = 0
    allocation: str = "uniform"
    key_weight: float = 3.0
    weighting: str = "uniform"
    sink: int = 4

    def __post_init__(self) -> None:
        if self.allocation not in ("uniform", "adaptive"):
            raise ConfigError(f"cskv_train.TrainConfig.allocation must be 'uniform' or 'adaptive', got "
                              f"{self.allocation!r}")
        if self.key_weight <= 0:
            raise ConfigError(f"cskv_train.TrainConfig.key_weight must be > 0, got {self.key_weight}")
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(f"cskv_train.TrainConfig.weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if self.sink < 0:
            raise ConfigError(f"cskv_train.TrainConfig.sink must be >= 0, got {self.sink}")
        if self.optimizer not in ("als", "adam"):
            raise ConfigError(f"cskv_train.TrainConfig.optimizer must be 'als' or 'adam', got {self.optimizer!r}")
        if self.init not in ("svd", "asvd"):
            raise ConfigError(f"cskv_train.TrainConfig.init must be 'svd' or 'asvd', got {self.init!r}")
        if self.steps < 0 or self.lr <= 0 or self.batch_tokens < 1:
            raise ConfigError("cskv_train.TrainConfig: steps >= 0, lr > 0 and batch_tokens >= 1 are required")


def _sample(x: torch.Tensor, weights: torch.Tensor, tokens: int, block: int, gen: torch.Generator):
    """Random calibration batch ``[n_blocks, block, d]`` of contiguous token blocks from ``x [N, T, d]``, with the
    tokens' weights ``[n_blocks, block]`` from ``weights [N, T]``."""
    n_seq, length = x.shape[:2]
    block = min(block, length)
    n_blocks = max(1, tokens // block)
    seq = torch.randint(n_seq, (n_blocks,), generator=gen)
    start = torch.randint(length // block, (n_blocks,), generator=gen) * block
    index = start[:, None] + torch.arange(block)[None, :]
    return x[seq[:, None], index], weights[seq[:, None], index]


def _reconstruct(x: torch.Tensor, down: torch.Tensor, up: torch.Tensor, kind: str, cfg: TrainConfig) -> torch.Tensor:
    latent = x @ down.T
    if kind == "k":
        latent = fake_quantize(latent, cfg.bits, cfg.window, axis=-2)
    else:
        latent = fake_quantize(latent, cfg.bits, cfg.group_size, axis=-1)
    return latent @ up.T


def _moment_mse(weight: torch.Tensor, down: torch.Tensor, up: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Exact ``mean_x mean_out (W x - up down x)^2`` from the second moment ``E[x x^T]``."""
    err = weight - up @ down
    return ((err @ second) * err).sum() / weight.shape[0]


def _moment_root(second: torch.Tensor) -> torch.Tensor:
    """``R [d, d]`` with ``R R^T = E[x x^T]`` (symmetric square root), so the MSE is ``||(W - up down) R||^2 / out``."""
    values, vectors = torch.linalg.eigh(second.double())
    return (vectors * values.clamp_min(0).sqrt()[None, :]).float()


def allocate_ranks(model: torch.nn.Module, stats: List[Dict[str, torch.Tensor]], k_rank: int, v_rank: int,
                   key_weight: float = 3.0):
    """Per-layer K and V ranks with the same total as `k_rank` / `v_rank` in every layer, chosen to minimise the
    summed relative reconstruction errors (key errors weighted by `key_weight`).

    With ``S = E[x x^T] = R R^T``, the best rank-r error of ``W x`` is the tail ``sum_{i>r} s_i^2`` of the singular
    values of ``W R``. Those tails are convex in r, so taking the largest normalised ``s_i^2`` over all layers and
    both kinds (every factor keeps at least rank 1) is the optimal allocation of the budget.

    Returns:
        ``(k_ranks, v_ranks)``, one int per layer.
    """
    modules = hf_compat.attention_modules(model)
    candidates = []  # (weighted share of the error removed by one more rank, layer, kind)
    for index, module in enumerate(modules):
        _, k_proj, v_proj, _ = hf_compat.projections(module)
        root = _moment_root(stats[index]["second"]).double()
        for kind, weight in (("k", k_proj.weight), ("v", v_proj.weight)):
            energy = torch.linalg.svdvals(weight.detach().double() @ root).pow(2)
            share = energy / energy.sum().clamp_min(1e-30) * (key_weight if kind == "k" else 1.0)
            candidates += [(float(v), index, kind) for v in share[1:]]
    spare = (k_rank + v_rank - 2) * len(modules)
    ranks = {"k": [1] * len(modules), "v": [1] * len(modules)}
    for _, index, kind in sorted(candidates, key=lambda c: c[0], reverse=True)[:spare]:
        ranks[kind][index] += 1
    return ranks["k"], ranks["v"]


def relative_errors(stats: Dict[str, torch.Tensor], k_weight: torch.Tensor, v_weight: torch.Tensor,
                    layer: Dict[str, torch.Tensor]) -> Dict[str, float]:
    """``E||W x - up down x||^2 / E||W x||^2`` for keys and values (float latents), from the layer's statistics."""
    second = stats["second"]
    out = {}
    for kind, weight in (("k", k_weight), ("v", v_weight)):
        w = weight.detach().double()
        err = _moment_mse(w, layer[f"{kind}_down"].double(), layer[f"{kind}_up"].double(), second)
        ref = ((w @ second) * w).sum() / w.shape[0]
        out[kind] = float((err / ref.clamp_min(1e-30)).detach())
    return out


def als_layer(stats: Dict[str, torch.Tensor], k_weight: torch.Tensor, v_weight: torch.Tensor,
              layer: Dict[str, torch.Tensor], steps: int, on_step=None) -> Dict[str, torch.Tensor]:
    """Alternating least squares on ``E||(W - up down) x||^2`` (exact over all calibration tokens).

    Each iteration sets ``up = W S down^T (down S down^T)^-1`` and then ``down = (up^T up)^-1 up^T W`` (``S =
    E[x x^T]``); both are exact minimisers of the loss for the other factor fixed, so the loss never increases.
    """
    second = stats["second"].double()
    out = {}
    for kind, weight in (("k", k_weight), ("v", v_weight)):
        w = weight.detach().double()
        down, up = layer[f"{kind}_down"].double(), layer[f"{kind}_up"].double()
        ws = w @ second
        ridge = 1e-9 * torch.eye(down.shape[0], dtype=torch.float64)
        for step in range(steps):
            ds = down @ second
            up = torch.linalg.solve(ds @ down.T + ridge * ds.diagonal().mean().clamp_min(1e-12),
                                    (ws @ down.T).T).T
            gram = up.T @ up
            down = torch.linalg.solve(gram + ridge * gram.diagonal().mean().clamp_min(1e-12), up.T @ w)
            if on_step is not None and kind == "v":  # the loss is evaluated on the last iteration only
                last = step == steps - 1
                on_step(step, float(_moment_mse(w, down, up, second)) if last else None)
        out[f"{kind}_down"] = down.to(layer[f"{kind}_down"].dtype).contiguous()
        out[f"{kind}_up"] = up.to(layer[f"{kind}_up"].dtype).contiguous()
    return out


def train_layer(stats: Dict[str, torch.Tensor], k_weight: torch.Tensor, v_weight: torch.Tensor,
                layer: Dict[str, torch.Tensor], cfg: TrainConfig, gen: torch.Generator,
                on_step=None) -> Dict[str, torch.Tensor]:
    """Adam on one layer's four factors, minimising the summed K and V reconstruction MSE.

    With float latents (``bits == 16``) every step uses the exact loss over *all* calibration tokens, computed from
    the second moment ``E[x x^T]`` (the MSE is quadratic in ``x``); with quantised latents the fake quantisation is
    not, so steps use random batches of `batch_tokens` recorded inputs.

    Args:
        stats: the layer's entry from `collect_attention_inputs`. k_weight / v_weight: ``[H_kv*D, d]``.
        layer: initial factors. cfg: settings. gen: sampling generator. on_step: optional ``fn(step, loss)``.

    Returns:
        The trained factors (new tensors, original dtype).
    """
    params = {name: tensor.detach().float().clone().requires_grad_(True) for name, tensor in layer.items()}
    weights = {"k": k_weight.detach().float(), "v": v_weight.detach().float()}
    root = _moment_root(stats["second"])
    targets = {kind: weights[kind] @ root for kind in weights}
    optimizer = torch.optim.Adam(params.values(), lr=cfg.lr)
    for step in range(cfg.steps):
        loss = 0.0
        if cfg.bits >= 16:
            for kind in ("k", "v"):
                approx = params[f"{kind}_up"] @ (params[f"{kind}_down"] @ root)
                loss = loss + (targets[kind] - approx).pow(2).sum() / targets[kind].shape[0]
        else:
            batch, token_weight = _sample(stats["inputs"], stats["weights"], cfg.batch_tokens, cfg.window, gen)
            batch, token_weight = batch.float(), token_weight[..., None]
            for kind in ("k", "v"):
                approx = _reconstruct(batch, params[f"{kind}_down"], params[f"{kind}_up"], kind, cfg)
                err = (approx - batch @ weights[kind].T).pow(2) * token_weight
                loss = loss + err.sum() / (token_weight.sum().clamp_min(1e-30) * approx.shape[-1])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_step is not None:
            on_step(step, float(loss.detach()))
    return {name: tensor.detach().to(layer[name].dtype).contiguous() for name, tensor in params.items()}


def _progress(enabled: bool):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), disable=not enabled)


def train(model: torch.nn.Module, calib_ids: torch.Tensor, k_density: float, v_density: float,
          cfg: Optional[TrainConfig] = None, progress: bool = True) -> CSKVFactors:
    """Initialise (ASVD/SVD) and train CSKV factors layer by layer on calibration text.

    Args:
        model: the causal LM (frozen). calib_ids: ``[N, T]`` calibration token ids (never the evaluation text).
        k_density / v_density: latent ranks as fractions of ``H_kv * D``.
        cfg: training settings. progress: show a rich progress bar.

    Returns:
        The factors, with per-layer relative errors (float latents) before and after training in
        ``metadata["layers"]``.
    """
    cfg = cfg or TrainConfig()
    if cfg.bits < 16 and cfg.optimizer != "adam":
        raise ConfigError("cskv_train: quantisation-aware training needs optimizer='adam'")
    with _progress(progress) as bar:
        stats = collect_attention_inputs(model, calib_ids, _InfoProgress(bar), keep_inputs=cfg.bits < 16,
                                         weighting=cfg.weighting, sink=cfg.sink, window=cfg.window)
        factors = _fit(model, stats, *latent_ranks(model, k_density, v_density), cfg, bar)
    factors.metadata.update({"k_density": k_density, "v_density": v_density, "train": asdict(cfg),
                             "calib_tokens": int(calib_ids.numel())})
    return factors


def fit(model: torch.nn.Module, stats: List[Dict[str, torch.Tensor]], k_density: float, v_density: float,
        cfg: Optional[TrainConfig] = None, progress: bool = True) -> CSKVFactors:
    """`train` from statistics already collected by `collect_attention_inputs` (several densities, one pass)."""
    cfg = cfg or TrainConfig()
    if cfg.bits < 16 and cfg.optimizer != "adam":
        raise ConfigError("cskv_train: quantisation-aware training needs optimizer='adam'")
    collected = stats[0].get("weighting", "uniform")
    if collected != cfg.weighting:
        raise ConfigError(f"cskv_train.fit: the statistics were collected with weighting={collected!r} but the config "
                          f"asks for {cfg.weighting!r}")
    if cfg.bits < 16 and "inputs" not in stats[0]:
        raise ConfigError("cskv_train.fit: quantisation-aware training needs stats collected with keep_inputs=True")
    with _progress(progress) as bar:
        factors = _fit(model, stats, *latent_ranks(model, k_density, v_density), cfg, bar)
    factors.metadata.update({"k_density": k_density, "v_density": v_density, "train": asdict(cfg)})
    return factors


def _fit(model, stats, k_rank: int, v_rank: int, cfg: TrainConfig, bar) -> CSKVFactors:
    """Initialise and train every layer, recording relative errors before and after."""
    modules = hf_compat.attention_modules(model)
    scales = [entry["absmean"] for entry in stats] if cfg.init == "asvd" else None
    k_ranks, v_ranks = k_rank, v_rank
    if cfg.allocation == "adaptive":
        k_ranks, v_ranks = allocate_ranks(model, stats, k_rank, v_rank, cfg.key_weight)
    factors = CSKVFactors.from_weights(model, k_ranks, v_ranks, scales, cfg.alpha)
    gen = torch.Generator().manual_seed(cfg.seed)
    task = bar.add_task("CSKV layer-wise training", total=len(modules) * max(cfg.steps, 1), info="")
    report = []
    for index, module in enumerate(modules):
        _, k_proj, v_proj, _ = hf_compat.projections(module)
        before = relative_errors(stats[index], k_proj.weight, v_proj.weight, factors.layers[index])

        def on_step(step, loss, index=index):
            info = f"layer {index}" + ("" if loss is None else f" loss {loss:.4g}")
            bar.update(task, advance=1, info=info)

        if cfg.steps and cfg.optimizer == "als" and cfg.bits >= 16:
            factors.layers[index] = als_layer(stats[index], k_proj.weight, v_proj.weight, factors.layers[index],
                                              cfg.steps, on_step)
        elif cfg.steps:
            factors.layers[index] = train_layer(stats[index], k_proj.weight, v_proj.weight, factors.layers[index],
                                                cfg, gen, on_step)
        else:
            bar.advance(task)
        after = relative_errors(stats[index], k_proj.weight, v_proj.weight, factors.layers[index])
        report.append({"layer": index, "k_before": before["k"], "v_before": before["v"],
                       "k_after": after["k"], "v_after": after["v"]})
    factors.metadata.update(layers=report, allocation=cfg.allocation)
    return factors


class _InfoProgress:
    """Adapter so helpers can add tasks without knowing about the extra ``info`` column."""

    def __init__(self, bar):
        self.bar = bar

    def add_task(self, description: str, total: int) -> int:
        return self.bar.add_task(description, total=total, info="")

    def advance(self, task: int) -> None:
        self.bar.advance(task)


def save(factors: CSKVFactors, folder: str | Path) -> Path:
    """Write ``factors.safetensors`` and ``cskv.json`` into `folder` (atomically each)."""
    folder = Path(folder)
    tensors = {f"layers.{i}.{name}": t for i, layer in enumerate(factors.layers) for name, t in layer.items()}
    save_tensors(folder / FACTORS_FILE, tensors)
    meta = dict(factors.metadata, num_layers=len(factors.layers), format="prunekit.cskv/1")
    atomic_write_text(folder / META_FILE, json.dumps(meta, indent=2))
    return folder


def load(folder: str | Path) -> CSKVFactors:
    """Read factors written by `save` (no training).

    Raises:
        CheckpointError: missing or malformed files, naming the folder.
    """
    folder = Path(folder)
    meta = read_json(folder / META_FILE, "prunekit.kvcache.cskv_train.load")
    tensors = load_tensors(folder / FACTORS_FILE)
    layers = []
    for index in range(int(meta.get("num_layers", 0))):
        try:
            layers.append({name: tensors[f"layers.{index}.{name}"] for name in ("k_down", "k_up", "v_down", "v_up")})
        except KeyError as exc:
            raise CheckpointError(f"prunekit.kvcache.cskv_train.load: {folder / FACTORS_FILE} lacks {exc}") from None
    if not layers:
        raise CheckpointError(f"prunekit.kvcache.cskv_train.load: {folder} holds no layers")
    return CSKVFactors(layers, meta)
