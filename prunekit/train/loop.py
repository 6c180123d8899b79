"""The reference training loop: one straight loop, with hooks as the only plug points.

Per step: set the learning rate, forward, task loss + every hook's ``extra_loss`` (distillation terms), backward,
every hook's ``after_backward`` (regularizer subgradients such as ``gamma.grad += s * sign(gamma)``), clip, step.
Per epoch: mean train loss (averaged over ranks), ``eval_fn(model)``, every hook's ``on_epoch_end``. Checkpoints
(`prunekit.train.checkpoint`) are written atomically every ``checkpoint_every`` steps or epochs; ``resume=True``
continues from the newest one and reproduces the uninterrupted run (same weights, same data order, same RNG).
The same function runs under ``torchrun`` (see `prunekit.train.distributed`).

Batches are ``(inputs, targets, ...)`` tuples (``outputs = model(inputs)``, ``loss_fn(outputs, targets)``) or
dicts (``outputs = model(**batch)``, ``loss_fn(outputs, batch)``).
"""
from __future__ import annotations

import contextlib
import logging
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, default_collate

from ..errors import ConfigError
from . import checkpoint as ckpt
from .distributed import (DistEnv, ResumableSampler, average_grads, barrier, broadcast_params, mean_over_ranks,
                          setup, teardown, wrap)

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Settings of the reference loop.

    Attributes:
        epochs: passes over the training set.
        lr: peak learning rate.
        momentum: SGD momentum (AdamW uses (momentum, 0.999) as betas).
        weight_decay: decoupled for AdamW, L2 for SGD; applied to every parameter.
        batch_size: samples per process per step (the global batch is ``batch_size * world_size``).
        optimizer: ``"sgd"`` | ``"adamw"``.
        schedule: ``"cosine"`` (to ``min_lr_ratio * lr`` at the last planned step) | ``"constant"``.
        warmup_steps: linear warm-up from ``lr / warmup_steps`` to ``lr``.
        min_lr_ratio: floor of the cosine schedule as a fraction of ``lr``.
        grad_clip: clip the global gradient norm to this value (0 = off).
        seed: seeds python, numpy, torch, the data order and the DataLoader workers (rank r uses ``seed + r``).
        checkpoint_dir: folder of the checkpoints (None = no checkpoints).
        checkpoint_every: write a checkpoint every this many `checkpoint_unit`s (0 = only at the end).
        checkpoint_unit: ``"step"`` | ``"epoch"``.
        keep_checkpoints: newest checkpoints kept (0 = all).
        resume: continue from the newest checkpoint in `checkpoint_dir` if there is one.
        device: ``"auto"`` | ``"cpu"`` | ``"cuda"`` | ``"cuda:N"``.
        num_workers: DataLoader worker processes.
        max_steps: stop after this many global steps (the schedule still spans ``epochs``; for smoke runs).
        log_every: record (and log) the loss every this many steps.
        progress: show a rich progress bar (only on rank 0 and when stderr is a terminal).
    """

    VERSION: ClassVar[int] = 1

    epochs: int = 1
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 64
    optimizer: str = "sgd"
    schedule: str = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    grad_clip: float = 0.0
    seed: int = 0
    checkpoint_dir: Optional[str] = None
    checkpoint_every: int = 0
    checkpoint_unit: str = "epoch"
    keep_checkpoints: int = 2
    resume: bool = False
    device: str = "auto"
    num_workers: int = 0
    max_steps: Optional[int] = None
    log_every: int = 50
    progress: bool = True

    def __post_init__(self):
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(f"TrainConfig: {msg}")

        need(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(0 <= self.momentum < 1, f"momentum must lie in [0, 1), got {self.momentum}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(self.optimizer in ("sgd", "adamw"), f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        need(self.schedule in ("cosine", "constant"), f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        need(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        need(0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        need(self.grad_clip >= 0, f"grad_clip must be >= 0, got {self.grad_clip}")
        need(self.checkpoint_every >= 0, f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        need(self.checkpoint_unit in ("step", "epoch"),
             f"checkpoint_unit must be 'step' or 'epoch', got {self.checkpoint_unit!r}")
        need(self.keep_checkpoints >= 0, f"keep_checkpoints must be >= 0, got {self.keep_checkpoints}")
        need(not self.resume or bool(self.checkpoint_dir), "resume=True needs a checkpoint_dir")
        need(self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}")
        need(self.max_steps is None or self.max_steps >= 1, f"max_steps must be >= 1 or None, got {self.max_steps}")
        need(self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}")


@dataclass
class LoopInfo:
    """What hooks learn in ``on_train_start``: the run's length, layout and one example batch (on the device)."""

    epochs: int
    steps_per_epoch: int
    total_steps: int
    rank: int
    world_size: int
    device: torch.device
    example_batch: Any


class TrainHook(Protocol):
    """The loop's plug points. Every method is optional: the loop calls only what a hook defines.

    - ``on_train_start(model, info: LoopInfo)``: before the optimizer is built (create lazy parameters here).
    - ``parameters() -> Iterable[Parameter]``: extra trainable tensors (adapters), optimised with the model.
    - ``context(model) -> ContextManager``: entered around the whole run (forward hooks that always come off).
    - ``extra_loss(model, batch, outputs, step) -> Tensor | None``: added to the task loss (distillation).
    - ``after_backward(model, step, epoch)``: edit gradients before the optimizer step (sparsity subgradients).
    - ``on_epoch_end(model, epoch, metrics: dict)``: after evaluation; may add entries to `metrics`.
    - ``progress_text() -> str``: a short note appended to the progress bar (a sparsifier's current sparsity).
    - ``state_dict() -> Dict[str, Tensor]`` / ``load_state_dict(d)``: tensors saved in checkpoints.

    `model` is always the unwrapped module (never the DDP wrapper), so module names match.
    """


@dataclass
class TrainResult:
    """What a run did.

    Attributes:
        steps: global optimizer steps completed.
        epochs: epochs completed.
        final_loss: mean train loss of the last (possibly partial) epoch, averaged over ranks.
        losses: (step, loss of that step on rank 0's shard) every `log_every` steps.
        epoch_metrics: one dict per completed epoch (``epoch``, ``train_loss``, ``lr``, eval metrics...).
        checkpoint: the last checkpoint folder written or resumed from (None without `checkpoint_dir`).
        resumed_from: the checkpoint the run started from, if any.
        seconds: wall time of this call.
    """

    steps: int
    epochs: int
    final_loss: float
    losses: List[Tuple[int, float]] = field(default_factory=list)
    epoch_metrics: List[Dict[str, float]] = field(default_factory=list)
    checkpoint: Optional[str] = None
    resumed_from: Optional[str] = None
    seconds: float = 0.0


# --------------------------------------------------------------------------- small helpers


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def move_to(batch: Any, device: torch.device) -> Any:
    """Move every tensor of a (nested) batch to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


def forward_batch(model: torch.nn.Module, batch: Any) -> Any:
    """``model(**batch)`` for dict batches, ``model(batch[0])`` for tuples, ``model(batch)`` for a tensor."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (list, tuple)):
        return model(batch[0])
    return model(batch)


def batch_targets(batch: Any) -> Any:
    if isinstance(batch, Mapping):
        return batch
    if isinstance(batch, (list, tuple)) and len(batch) > 1:
        return batch[1]
    return None


def lr_at(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """Learning rate of global step `step` (0-based) in a run of `total_steps`."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    t = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def make_optimizer(cfg: TrainConfig, params: Sequence[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay)


def _call(hook: Any, name: str, *args: Any) -> Any:
    fn = getattr(hook, name, None)
    return fn(*args) if fn is not None else None


def _progress(show: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), disable=not show, transient=True)


def _loader(dataset: Dataset, cfg: TrainConfig, env: DistEnv, epoch: int, skip_batches: int,
            collate_fn: Optional[Callable]) -> DataLoader:
    sampler = ResumableSampler(dataset, env, seed=cfg.seed, skip=skip_batches * cfg.batch_size)
    sampler.set_epoch(epoch)
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                      generator=gen, drop_last=False, collate_fn=collate_fn)


# --------------------------------------------------------------------------- the loop


def train(
    model: torch.nn.Module,
    train_dataset: Dataset,
    cfg: TrainConfig,
    loss_fn: Optional[Callable[[Any, Any], torch.Tensor]] = None,
    eval_fn: Optional[Callable[[torch.nn.Module], Dict[str, float]]] = None,
    hooks: Sequence[Any] = (),
    collate_fn: Optional[Callable[[list], Any]] = None,
) -> TrainResult:
    """Train `model` in place.

    Args:
        model: any module; moved to the configured device.
        train_dataset: map-style dataset of ``(inputs, targets)`` tuples or dicts.
        cfg: loop settings.
        loss_fn: ``loss_fn(outputs, targets) -> scalar``; default cross-entropy on logits [B, K] vs labels [B].
        eval_fn: ``eval_fn(model) -> {name: float}``, called at the end of every epoch (model in eval mode).
        hooks: `TrainHook` objects (regularizers, distillers...), called in order.
        collate_fn: the DataLoader's collate function (default ``default_collate``).

    Returns:
        A `TrainResult`.
    """
    env = setup(cfg.device)
    try:
        return _run(model, train_dataset, cfg, loss_fn or F.cross_entropy, eval_fn, list(hooks), env,
                    collate_fn or default_collate)
    finally:
        teardown(env)


def _run(model, dataset, cfg: TrainConfig, loss_fn, eval_fn, hooks: List[Any], env: DistEnv,
         collate_fn: Callable) -> TrainResult:
    started = time.perf_counter()
    seed_everything(cfg.seed + env.rank)
    model.to(env.device)
    steps_per_epoch = math.ceil(len(ResumableSampler(dataset, env, cfg.seed)) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    example = move_to(collate_fn([dataset[i] for i in range(min(2, len(dataset)))]), env.device)
    info = LoopInfo(cfg.epochs, steps_per_epoch, total_steps, env.rank, env.world_size, env.device, example)
    for h in hooks:
        _call(h, "on_train_start", model, info)
    extra = [p for h in hooks for p in (_call(h, "parameters") or ()) if p.requires_grad]
    broadcast_params(extra, env)
    optimizer = make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad] + extra)

    st = {"epoch": 0, "in_epoch": 0, "step": 0, "loss_sum": 0.0, "loss_count": 0, "losses": [], "epochs": []}
    resumed_from = last_ckpt = None
    if cfg.resume and (found := ckpt.latest_checkpoint(cfg.checkpoint_dir)) is not None:
        meta, hook_tensors = ckpt.load_checkpoint(found, model, optimizer)
        for i, h in enumerate(hooks):
            own = {k[len(f"hook{i}."):]: v for k, v in hook_tensors.items() if k.startswith(f"hook{i}.")}
            if own:
                _call(h, "load_state_dict", own)
        st.update(meta["progress"])
        if env.rank > 0:  # only rank 0's RNG streams are stored; derive the others from the step
            seed_everything(cfg.seed + env.rank + 7919 * st["step"])
        resumed_from = last_ckpt = str(found)
        log.info("resumed from %s at step %d", found, st["step"])
    net = wrap(model, env)

    def save() -> str:
        hook_tensors = {f"hook{i}.{k}": v for i, h in enumerate(hooks)
                        for k, v in (_call(h, "state_dict") or {}).items()}
        path = None
        if env.is_main:
            progress = {**st, "config": asdict(cfg)}
            path = str(ckpt.save_checkpoint(cfg.checkpoint_dir, st["step"], model, optimizer, progress,
                                            hook_tensors, cfg.keep_checkpoints))
        barrier(env)
        return path or str(ckpt.checkpoint_name(st["step"]))

    show = cfg.progress and env.is_main and sys.stderr.isatty()
    stop = False
    lr = lr_at(cfg, st["step"], total_steps)
    with contextlib.ExitStack() as stack:
        for h in hooks:
            if getattr(h, "context", None) is not None:
                stack.enter_context(h.context(model))
        bar = stack.enter_context(_progress(show))
        task = bar.add_task("train", total=total_steps, completed=st["step"])
        for epoch in range(st["epoch"], cfg.epochs):
            net.train()
            for batch in _loader(dataset, cfg, env, epoch, st["in_epoch"], collate_fn):
                if cfg.max_steps is not None and st["step"] >= cfg.max_steps:
                    stop = True
                    break
                step = st["step"]
                lr = lr_at(cfg, step, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                batch = move_to(batch, env.device)
                outputs = forward_batch(net, batch)
                loss = loss_fn(outputs, batch_targets(batch))
                for h in hooks:
                    term = _call(h, "extra_loss", model, batch, outputs, step)
                    if term is not None:
                        loss = loss + term
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                average_grads(extra, env)
                for h in hooks:
                    _call(h, "after_backward", model, step, epoch)
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(optimizer.param_groups[0]["params"], cfg.grad_clip)
                optimizer.step()
                value = float(loss.detach())
                st["step"] += 1
                st["in_epoch"] += 1
                st["loss_sum"] += value
                st["loss_count"] += 1
                if st["step"] % cfg.log_every == 0:
                    st["losses"].append([st["step"], value])
                    log.info("step %d loss %.4f lr %.4g", st["step"], value, lr)
                notes = "".join(f" {t}" for h in hooks if (t := _call(h, "progress_text")))
                bar.update(task, advance=1, description=f"epoch {epoch + 1}/{cfg.epochs} loss {value:.4f}{notes}")
                if (cfg.checkpoint_dir and cfg.checkpoint_unit == "step" and cfg.checkpoint_every
                        and st["step"] % cfg.checkpoint_every == 0):
                    last_ckpt = save()
            if stop:
                break
            metrics = {"train_loss": st["loss_sum"] / max(1, st["loss_count"]), "lr": lr}
            if eval_fn is not None:
                net.eval()
                metrics.update(eval_fn(model))
                net.train()
            metrics = {"epoch": epoch, **mean_over_ranks(metrics, env)}
            for h in hooks:
                _call(h, "on_epoch_end", model, epoch, metrics)
            st["epochs"].append(metrics)
            st.update(epoch=epoch + 1, in_epoch=0, loss_sum=0.0, loss_count=0)
            if (cfg.checkpoint_dir and cfg.checkpoint_unit == "epoch" and cfg.checkpoint_every
                    and (epoch + 1) % cfg.checkpoint_every == 0):
                last_ckpt = save()
    if cfg.checkpoint_dir and (last_ckpt is None or not last_ckpt.endswith(ckpt.checkpoint_name(st["step"]))):
        last_ckpt = save()
    if st["loss_count"]:
        final = mean_over_ranks({"loss": st["loss_sum"] / st["loss_count"]}, env)["loss"]
    else:
        final = st["epochs"][-1]["train_loss"] if st["epochs"] else float("nan")
    return TrainResult(steps=st["step"], epochs=st["epoch"], final_loss=final,
                       losses=[(int(s), float(v)) for s, v in st["losses"]], epoch_metrics=list(st["epochs"]),
                       checkpoint=last_ckpt, resumed_from=resumed_from, seconds=time.perf_counter() - started)
