"""CSKV layer-wise training: fit each layer's low-rank K/V factors to reconstruct its keys and values.

The language model stays frozen and no language-model loss is used (``kvmse_lambda = 1`` in the official code):
for every layer, with ``x`` the attention input recorded on calibration text by the *original* model (so layers do
not see each other's errors), minimise::

    MSE(W_K x, up_K down_K x) + MSE(W_V x, up_V down_V x)

The paper writes the key term after RoPE; RoPE rotates each (2i, 2i+1) pair of a key by an angle that depends only on
its position, so it preserves squared errors and the two losses are equal. Factors start from ASVD (``init="asvd"``:
SVD of ``W diag(mean|x|^alpha)``) or a plain SVD, and are trained with Adam on random token batches; with
``bits < 16`` the latents are fake-quantised (straight-through) as the cache will store them.

`save` writes ``factors.safetensors`` plus ``cskv.json`` into a folder; `load` reads them back without retraining.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional

import torch

from ..errors import CheckpointError, ConfigError
from ..io import atomic_write_text, load_tensors, save_tensors
from . import hf_compat
from .cskv import CSKVFactors, rank_for
from .quant import fake_quantize

FACTORS_FILE, META_FILE = "factors.safetensors", "cskv.json"


@dataclass
class TrainConfig:
    """Settings of the layer-wise training.

    Attributes:
        steps: Adam steps per layer (0: initialisation only). lr: learning rate.
        batch_tokens: calibration tokens per step. init: ``"asvd"`` or ``"svd"``. alpha: ASVD exponent.
        bits: 16, or 8 / 4 for quantisation-aware training. window / group_size: the quantisation layout of the press.
        seed: sampling seed.
    """

    steps: int = 300
    lr: float = 1e-3
    batch_tokens: int = 1024
    init: str = "asvd"
    alpha: float = 0.5
    bits: int = 16
    window: int = 32
    group_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.init not in ("svd", "asvd"):
            raise ConfigError(f"cskv_train.TrainConfig.init must be 'svd' or 'asvd', got {self.init!r}")
        if self.steps < 0 or self.lr <= 0 or self.batch_tokens < 1:
            raise ConfigError("cskv_train.TrainConfig: steps >= 0, lr > 0 and batch_tokens >= 1 are required")


@torch.no_grad()
def collect_attention_inputs(model: torch.nn.Module, ids: torch.Tensor, progress=None) -> List[torch.Tensor]:
    """Record every layer's attention input on calibration text.

    Args:
        model: the frozen causal LM. ids: ``[N, T]`` calibration token ids (one sequence per forward).
        progress: optional ``rich.progress.Progress`` to report on.

    Returns:
        One ``[N, T, d]`` tensor per layer.
    """
    modules = hf_compat.attention_modules(model)
    records: List[List[torch.Tensor]] = [[] for _ in modules]
    handles = []
    for index, module in enumerate(modules):
        _, k_proj, _, _ = hf_compat.projections(module)
        handles.append(k_proj.register_forward_pre_hook(
            lambda mod, args, index=index: records[index].append(args[0].detach().clone())))
    task = progress.add_task("CSKV calibration forwards", total=ids.shape[0]) if progress else None
    try:
        for row in range(ids.shape[0]):
            model(ids[row:row + 1], use_cache=False)
            if progress:
                progress.advance(task)
    finally:
        for handle in handles:
            handle.remove()
    return [torch.cat(parts, dim=0) for parts in records]


def _sample(x: torch.Tensor, tokens: int, block: int, gen: torch.Generator) -> torch.Tensor:
    """Random calibration batch ``[n_blocks, block, d]`` of contiguous token blocks from ``x [N, T, d]``."""
    n_seq, length, dim = x.shape
    block = min(block, length)
    n_blocks = max(1, tokens // block)
    seq = torch.randint(n_seq, (n_blocks,), generator=gen)
    start = torch.randint(length // block, (n_blocks,), generator=gen) * block
    index = start[:, None] + torch.arange(block)[None, :]
    return x[seq[:, None], index]


def _reconstruct(x: torch.Tensor, down: torch.Tensor, up: torch.Tensor, kind: str, cfg: TrainConfig) -> torch.Tensor:
    latent = x @ down.T
    if cfg.bits < 16:
        if kind == "k":
            latent = fake_quantize(latent, cfg.bits, cfg.window, axis=-2)
        else:
            latent = fake_quantize(latent, cfg.bits, cfg.group_size, axis=-1)
    return latent @ up.T


def relative_errors(x: torch.Tensor, k_weight: torch.Tensor, v_weight: torch.Tensor, layer: Dict[str, torch.Tensor],
                    cfg: TrainConfig) -> Dict[str, float]:
    """``||W x - up down x||^2 / ||W x||^2`` for keys and values on ``x [N, T, d]``."""
    out = {}
    with torch.no_grad():
        block = cfg.window if cfg.bits < 16 else x.shape[1]
        xb = x[:, : (x.shape[1] // block) * block].reshape(-1, block, x.shape[-1])
        for kind, weight in (("k", k_weight), ("v", v_weight)):
            target = xb @ weight.T
            approx = _reconstruct(xb, layer[f"{kind}_down"], layer[f"{kind}_up"], kind, cfg)
            out[kind] = float((target - approx).pow(2).sum() / target.pow(2).sum().clamp_min(1e-12))
    return out


def train_layer(x: torch.Tensor, k_weight: torch.Tensor, v_weight: torch.Tensor, layer: Dict[str, torch.Tensor],
                cfg: TrainConfig, gen: torch.Generator, on_step=None) -> Dict[str, torch.Tensor]:
    """Adam on one layer's four factors, minimising the summed K and V reconstruction MSE.

    Args:
        x: ``[N, T, d]`` attention inputs. k_weight / v_weight: ``[H_kv*D, d]``. layer: initial factors.
        cfg: settings. gen: sampling generator. on_step: optional ``fn(step, loss)``.

    Returns:
        The trained factors (new tensors).
    """
    params = {name: tensor.detach().float().clone().requires_grad_(True) for name, tensor in layer.items()}
    weights = {"k": k_weight.detach().float(), "v": v_weight.detach().float()}
    optimizer = torch.optim.Adam(params.values(), lr=cfg.lr)
    block = cfg.window if cfg.bits < 16 else min(32, x.shape[1])
    for step in range(cfg.steps):
        batch = _sample(x, cfg.batch_tokens, block, gen).float()
        loss = 0.0
        for kind in ("k", "v"):
            target = batch @ weights[kind].T
            approx = _reconstruct(batch, params[f"{kind}_down"], params[f"{kind}_up"], kind, cfg)
            loss = loss + torch.nn.functional.mse_loss(approx, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_step is not None:
            on_step(step, float(loss.detach()))
    return {name: tensor.detach().to(layer[name].dtype).contiguous() for name, tensor in params.items()}


def train(model: torch.nn.Module, calib_ids: torch.Tensor, k_density: float, v_density: float,
          cfg: Optional[TrainConfig] = None, progress: bool = True) -> CSKVFactors:
    """Initialise (ASVD/SVD) and train CSKV factors layer by layer on calibration text.

    Args:
        model: the causal LM (frozen). calib_ids: ``[N, T]`` calibration token ids (never the evaluation text).
        k_density / v_density: latent ranks as fractions of ``H_kv * D``.
        cfg: training settings. progress: show a rich progress bar.

    Returns:
        The factors, with per-layer relative errors before and after training in ``metadata["layers"]``.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    cfg = cfg or TrainConfig()
    modules = hf_compat.attention_modules(model)
    _, kv_heads, head_dim = hf_compat.head_layout(modules[0])
    k_rank, v_rank = rank_for(k_density, kv_heads * head_dim), rank_for(v_density, kv_heads * head_dim)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn())
    with Progress(*columns, disable=not progress, transient=False) as bar:
        inputs = collect_attention_inputs(model, calib_ids, _InfoProgress(bar))
        scales = [x.abs().mean(dim=(0, 1)) for x in inputs] if cfg.init == "asvd" else None
        factors = CSKVFactors.from_weights(model, k_rank, v_rank, scales, cfg.alpha)
        gen = torch.Generator().manual_seed(cfg.seed)
        task = bar.add_task("CSKV layer-wise training", total=len(modules) * max(cfg.steps, 1), info="")
        report = []
        for index, module in enumerate(modules):
            _, k_proj, v_proj, _ = hf_compat.projections(module)
            before = relative_errors(inputs[index], k_proj.weight, v_proj.weight, factors.layers[index], cfg)

            def on_step(step, loss, index=index):
                bar.update(task, advance=1, info=f"layer {index} loss {loss:.4g}")

            if cfg.steps:
                factors.layers[index] = train_layer(inputs[index], k_proj.weight, v_proj.weight,
                                                    factors.layers[index], cfg, gen, on_step)
            else:
                bar.advance(task)
            after = relative_errors(inputs[index], k_proj.weight, v_proj.weight, factors.layers[index], cfg)
            report.append({"layer": index, "k_before": before["k"], "v_before": before["v"],
                           "k_after": after["k"], "v_after": after["v"]})
    factors.metadata.update({"k_density": k_density, "v_density": v_density, "train": asdict(cfg),
                             "calib_tokens": int(calib_ids.numel()), "layers": report})
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
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"prunekit.kvcache.cskv_train.load: no {META_FILE} in {folder}")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"prunekit.kvcache.cskv_train.load: malformed {meta_path}: {exc}") from None
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
