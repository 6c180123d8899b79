"""Bi-level TAS search: weights on one half of the training data, width logits on the other half.

Per step (methods.md section 7(a)): a weight step on a batch of the first half (cross-entropy of the Gumbel-sampled
supernet, SGD with Nesterov momentum, cosine learning rate), then an architecture step on a batch of the second half
(cross-entropy + ``cost_weight * L_cost``, Adam on the logits), where ``L_cost`` is the paper's step loss of the
expected MACs around the target (`cost.step_cost_loss`). The Gumbel temperature is cosine-annealed from `tau_max` to
`tau_min`. Expected and argmax MACs are logged every `log_every` steps (the step loss makes the argmax oscillate
around the target: log both, methods.md 7(f)).

Resumable: a checkpoint (supernet weights and logits, both optimizers, RNG, position in the epoch, history) is
written atomically into `checkpoint_dir` every epoch and when `max_steps` stops the search; a rerun continues from it.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from ...errors import ConfigError
from .cost import step_cost_loss, tau_at
from .space import PAPER_FRACTIONS
from .supernet import TASSupernet


def _need(ok: bool, section: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{section}: {message}")


@dataclass
class TASSearchConfig:
    """Settings of the TAS width search (recipe section ``search``).

    Attributes:
        keep_macs: target R as a fraction of the unpruned MACs.
        tolerance: t, the band below R inside which the cost loss is 0, as a fraction of the unpruned MACs (the
            paper: 0.05; 0.025 keeps the derived MACs within 5% of a half-MACs target).
        cost_weight: lambda_cost (the paper's FLOP_weight: 2).
        fractions: candidate width fractions (the paper: 0.3 to 1.0 by 0.1).
        epochs: passes over the weight half. batch_size: images per step on each half.
        lr, momentum, weight_decay, nesterov: SGD of the weight step (cosine to 0).
        arch_lr, arch_betas, arch_weight_decay: Adam of the architecture step (the paper: 1e-3, (0.5, 0.999), 1e-3).
        tau_max, tau_min: Gumbel temperature, cosine-annealed over the search.
        init_std: std of the logit initialisation.
        ignore: group ids kept at full width.
        split_seed: seed of the 50/50 split.
        log_every: steps between history entries.
        max_steps: stop after this many steps (resumable; for smoke runs).
    """

    SECTION: ClassVar[str] = "search"

    keep_macs: float = 0.5
    tolerance: float = 0.025
    cost_weight: float = 2.0
    fractions: Tuple[float, ...] = PAPER_FRACTIONS
    epochs: int = 1
    batch_size: int = 64
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    arch_lr: float = 1e-3
    arch_betas: Tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3
    tau_max: float = 5.0
    tau_min: float = 0.1
    init_std: float = 0.01
    ignore: Tuple[str, ...] = ()
    split_seed: int = 0
    log_every: int = 10
    max_steps: Optional[int] = None

    def __post_init__(self):
        s = self.SECTION
        self.fractions = tuple(float(f) for f in self.fractions)
        self.arch_betas = tuple(float(b) for b in self.arch_betas)
        self.ignore = tuple(self.ignore)
        _need(0.0 < self.keep_macs < 1.0, s, f"keep_macs must lie in (0, 1), got {self.keep_macs}")
        _need(0.0 <= self.tolerance < self.keep_macs, s, f"tolerance must lie in [0, keep_macs), got {self.tolerance}")
        _need(self.cost_weight >= 0, s, f"cost_weight must be >= 0, got {self.cost_weight}")
        _need(len(self.fractions) >= 2 and all(0 < f <= 1 for f in self.fractions), s,
              f"fractions must be at least two values in (0, 1], got {list(self.fractions)}")
        _need(self.epochs >= 1 and self.batch_size >= 1, s, "epochs and batch_size must be >= 1")
        _need(self.lr > 0 and self.arch_lr > 0, s, "lr and arch_lr must be > 0")
        _need(0 <= self.momentum < 1, s, f"momentum must lie in [0, 1), got {self.momentum}")
        _need(self.weight_decay >= 0 and self.arch_weight_decay >= 0, s, "weight decays must be >= 0")
        _need(len(self.arch_betas) == 2 and all(0 <= b < 1 for b in self.arch_betas), s,
              f"arch_betas must be two values in [0, 1), got {list(self.arch_betas)}")
        _need(0 < self.tau_min <= self.tau_max, s, f"need 0 < tau_min <= tau_max, got {self.tau_min}, {self.tau_max}")
        _need(self.init_std >= 0, s, f"init_std must be >= 0, got {self.init_std}")
        _need(self.log_every >= 1, s, f"log_every must be >= 1, got {self.log_every}")
        _need(self.max_steps is None or self.max_steps >= 1, s, f"max_steps must be >= 1 or null, got {self.max_steps}")


@dataclass
class SearchResult:
    """What a search did.

    Attributes:
        complete: False when `max_steps` stopped it (rerun to continue).
        widths: derived widths, group id -> kept channels (argmax, or the last in-band argmax seen, see `derived_from`).
        argmax_macs / expected_macs: per example, at the end. full_macs / target_macs: the unpruned MACs and R.
        derived_from: ``final_argmax`` or ``last_in_band`` (the final argmax fell outside [R - t, R]).
        history: one entry per logged step: step, tau, expected and argmax MACs (fractions of the unpruned MACs),
            cross-entropies of both steps, mean top-1 minus top-2 probability (the discrepancy the paper watches).
        steps, seconds, resumed_from.
    """

    complete: bool
    widths: Dict[str, int]
    argmax_macs: float
    expected_macs: float
    full_macs: float
    target_macs: float
    derived_from: str
    history: List[Dict[str, float]] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    resumed_from: Optional[str] = None

    def summary(self) -> Dict[str, Any]:
        """JSON-ready facts (history included)."""
        return {**asdict(self), "argmax_keep": self.argmax_macs / self.full_macs,
                "expected_keep": self.expected_macs / self.full_macs}


def split_halves(dataset: Dataset, seed: int) -> Tuple[Subset, Subset]:
    """A seeded random 50/50 split: (weight half, architecture half)."""
    order = np.random.RandomState(seed).permutation(len(dataset)).tolist()
    half = len(order) // 2
    if half < 1:
        raise ConfigError(f"tas search: the training set needs at least 2 items for a 50/50 split, got {len(order)}")
    return Subset(dataset, sorted(order[:half])), Subset(dataset, sorted(order[half:2 * half]))


def _loader(data: Dataset, batch: int, seed: int, epoch: int, skip: int = 0) -> DataLoader:
    """The epoch's batches in a seeded order, without its first `skip` batches (resuming inside an epoch loads
    nothing twice and draws nothing from the global RNG, so the resumed run sees the uninterrupted run's data)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(data), generator=gen).tolist()[skip * batch:]
    return DataLoader(Subset(data, order), batch_size=batch, shuffle=False, generator=gen)


def _discrepancy(net: TASSupernet) -> float:
    gaps = []
    for p in net.probabilities().values():
        top = torch.topk(p.detach(), 2).values
        gaps.append(float(top[0] - top[1]))
    return float(np.mean(gaps))


def search(net: TASSupernet, train_set: Dataset, cfg: TASSearchConfig, seed: int = 0,
           checkpoint_dir: Optional[str] = None, device: str = "cpu") -> SearchResult:
    """Run (or resume) the bi-level search on `net` in place.

    Args:
        net: the supernet (weights and logits are trained in place).
        train_set: ``(image, label)`` items; split 50/50 by `cfg.split_seed`.
        cfg: search settings. seed: seeds sampling and data order.
        checkpoint_dir: folder of the resumable checkpoints (None: no checkpoints).

    Returns:
        a `SearchResult`.
    """
    from ...train import checkpoint as ckpt

    started = time.perf_counter()
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    net.to(device).train()
    weights_half, arch_half = split_halves(train_set, cfg.split_seed)
    steps_per_epoch = math.ceil(len(weights_half) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    w_opt = torch.optim.SGD(net.weight_parameters(), lr=cfg.lr, momentum=cfg.momentum,
                            weight_decay=cfg.weight_decay, nesterov=cfg.nesterov and cfg.momentum > 0)
    a_opt = torch.optim.Adam(net.arch_parameters(), lr=cfg.arch_lr, betas=cfg.arch_betas,
                             weight_decay=cfg.arch_weight_decay)
    full = net.cost.full
    target, band = cfg.keep_macs * full, cfg.tolerance * full
    st: Dict[str, Any] = {"epoch": 0, "in_epoch": 0, "step": 0, "history": [], "in_band": None}
    resumed_from = None
    if checkpoint_dir and (found := ckpt.latest_checkpoint(checkpoint_dir)) is not None:
        meta, extra = ckpt.load_checkpoint(found, net, w_opt)
        a_opt.load_state_dict(ckpt.unflatten_optimizer({k[5:]: v for k, v in extra.items() if k.startswith("arch.")},
                                                       meta["progress"]["arch_optimizer"]))
        st.update({k: meta["progress"][k] for k in st})
        resumed_from = str(found)

    def save() -> None:
        if not checkpoint_dir:
            return
        tensors, index = ckpt.flatten_optimizer(a_opt.state_dict())
        ckpt.save_checkpoint(checkpoint_dir, st["step"], net, w_opt, {**st, "arch_optimizer": index},
                             {f"arch.{k}": v for k, v in tensors.items()})

    stopped = False
    for epoch in range(st["epoch"], cfg.epochs):
        skip = st["in_epoch"]  # > 0 when resumed inside this epoch
        arch_iter = iter(_loader(arch_half, cfg.batch_size, seed + 1, epoch, skip))
        for b, (x, y) in enumerate(_loader(weights_half, cfg.batch_size, seed, epoch, skip), start=skip):
            if cfg.max_steps is not None and st["step"] >= cfg.max_steps:
                stopped = True
                break
            step = st["step"]
            net.tau = tau_at(step / max(1, total - 1), cfg.tau_max, cfg.tau_min)
            lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / max(1, total)))
            for g in w_opt.param_groups:
                g["lr"] = lr
            # weight step (first half)
            net.mode = "sample"
            ce_w = F.cross_entropy(net(x.to(device)), y.to(device))
            w_opt.zero_grad(set_to_none=True)
            ce_w.backward()
            w_opt.step()
            # architecture step (second half); the arch loader cycles if the halves differ in batch count
            try:
                xa, ya = next(arch_iter)
            except StopIteration:
                arch_iter = iter(_loader(arch_half, cfg.batch_size, seed + 1, epoch + 7919))
                xa, ya = next(arch_iter)
            ce_a = F.cross_entropy(net(xa.to(device)), ya.to(device))
            expected = net.expected_macs()
            argmax_macs = net.macs_of(net.argmax_widths())
            loss = ce_a + cfg.cost_weight * step_cost_loss(expected, argmax_macs, target, band)
            a_opt.zero_grad(set_to_none=True)
            w_opt.zero_grad(set_to_none=True)
            loss.backward()
            a_opt.step()
            st["step"] += 1
            st["in_epoch"] = b + 1
            after = net.macs_of(net.argmax_widths())
            if target - band <= after <= target:
                st["in_band"] = net.argmax_widths()
            if st["step"] % cfg.log_every == 0 or st["step"] == total:
                st["history"].append({"step": st["step"], "tau": round(net.tau, 4),
                                      "expected_keep": float(net.expected_macs().detach()) / full,
                                      "argmax_keep": after / full, "ce_weights": float(ce_w.detach()),
                                      "ce_arch": float(ce_a.detach()), "discrepancy": _discrepancy(net)})
        if stopped:
            break
        st.update(epoch=epoch + 1, in_epoch=0)
        save()
    if stopped:
        save()
    widths = net.argmax_widths()
    final = net.macs_of(widths)
    derived_from = "final_argmax"
    if not (target - band <= final <= target) and st["in_band"] is not None:
        widths, derived_from = {k: int(v) for k, v in st["in_band"].items()}, "last_in_band"
    net.mode = "argmax"
    return SearchResult(complete=not stopped, widths=widths, argmax_macs=net.macs_of(widths),
                        expected_macs=float(net.expected_macs().detach()), full_macs=full, target_macs=target,
                        derived_from=derived_from, history=list(st["history"]), steps=st["step"],
                        seconds=time.perf_counter() - started, resumed_from=resumed_from)
