"""The channel variant: one mask per channel of the engine's channel groups, ending in a physical removal.

Channels are scored on `prunekit.analyze`'s groups, so channels that must go together (a residual stream, a
concatenation, grouped convolutions) share one score and one mask. A channel's score is the L2 norm of every slice
that *produces* it (the "out" members with two or more dims: conv filters, linear rows), its mask multiplies every
parameter slice that produces or normalises it (filters, biases, BatchNorm scale and shift), so a channel at mask 0
outputs exactly zero and removing it changes nothing. During training (the hook's ``context``) the masks are
computed once per forward, by a forward pre-hook on the model, from the current weights, differentiably.

- `ChannelPDP`: ``m_c = sigmoid((s_c^2 - t^2) / tau)``, t the midpoint of the boundary norms at the group's current
  ratio ``ramp(step) * sparsity`` (the same ratio in every group: filter norms of different groups are not
  comparable), ``tau = temperature * mean(s^2)`` per group.
- `ChannelGMP`: hard masks of the lowest-norm channels on the cubic schedule (one-shot with no ramp).
- ``harden(model, inputs)`` builds the `PruningPlan` of the lowest-scoring channels at the final ratio, bakes the
  masks into the weights and removes the channels with `prunekit.apply` (verified against the masked model).

Deviation noted by the spec: filter norms ignore the BatchNorm scale that follows (no gamma folding).
"""
from __future__ import annotations

import contextlib
import fnmatch
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn
from torch.nn.utils import parametrize

from .masks import cubic_update, hard_keep, midpoint_threshold, prune_count, ramp

Slice = Tuple[str, int, torch.Tensor]  # (group id, dim, index_map [C, k])


def channels_to_prune(group, ratio: float, min_keep: int) -> int:
    """Channels of `group` pruned at `ratio`: rounded, keeping at least ``max(min_keep, group.min_keep)`` and a
    multiple of ``group.round_to`` channels (head and rounding constraints of the engine)."""
    k = min(prune_count(group.size, ratio), group.size - max(min_keep, group.min_keep))
    if k <= 0:
        return 0
    step = max(1, group.round_to)
    kept = -(-(group.size - k) // step) * step
    return max(0, group.size - kept)


class ChannelSoftMask(nn.Module):
    """Parametrization multiplying the slices of one parameter by their groups' current channel masks."""

    def __init__(self, owner: "ChannelSparsifier", shape: Tuple[int, ...], slices: List[Slice]):
        super().__init__()
        self.owner, self.shape, self.slices = [owner], shape, slices  # list: keep the owner out of the module tree

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        masks = self.owner[0].current
        for gid, dim, index in self.slices:
            vec = masks.get(gid)
            if vec is None:
                continue
            k = index.shape[1]
            full = torch.ones(w.shape[dim], dtype=w.dtype, device=w.device)
            full = full.index_copy(0, index.reshape(-1).to(w.device), vec.to(w.dtype).repeat_interleave(k))
            view = [1] * w.dim()
            view[dim] = w.shape[dim]
            w = w * full.reshape(view)
        return w


class ChannelSparsifier:
    """Base of the channel-pattern hooks (subclasses compute `current` masks in `masks_for`).

    Args:
        config: a `SparsityConfig` with ``pattern: channel``.
        inputs: example inputs for tracing the groups and verifying the removal.
    """

    method = "channel"

    def __init__(self, config, inputs: Any):
        if config.kind != "channel":
            from ...errors import ConfigError

            raise ConfigError(f"{type(self).__name__}: needs pattern 'channel', got {config.pattern!r}")
        self.config, self.inputs = config, inputs
        self.groups: List[Any] = []
        self.current: Dict[str, torch.Tensor] = {}
        self.step, self.warmup_steps, self.ramp_steps = 0, 0, 0
        self.history: List[List[float]] = []
        self.recovery_events = 0
        self._below: Dict[str, torch.Tensor] = {}
        self.model: Optional[nn.Module] = None

    # ---------------------------------------------------------------------------------------------- set-up
    def _eligible(self, analysis) -> List[Any]:
        cfg = self.config
        out = []
        for g in analysis.groups:
            mods = {m.module for m in g.members}
            if not (g.prunable and g.exact and channels_to_prune(g, cfg.sparsity, cfg.min_keep) > 0):
                continue
            if cfg.include and not any(fnmatch.fnmatchcase(m, p) for m in mods for p in cfg.include):
                continue
            if cfg.exclude and any(fnmatch.fnmatchcase(m, p) for m in mods for p in cfg.exclude):
                continue
            if any(m.role == "out" and self._is_param(self.model, m, min_dim=2) for m in g.members):
                out.append(g)
        return out

    @staticmethod
    def _is_param(model: nn.Module, m, min_dim: int = 1) -> bool:
        module = model.get_submodule(m.module)
        p = module._parameters.get(m.param)
        if p is None and parametrize.is_parametrized(module, m.param):
            p = module.parametrizations[m.param].original
        return isinstance(p, torch.Tensor) and p.dim() >= min_dim

    def prepare(self, model: nn.Module, steps_per_epoch: int) -> None:
        from ...graph import analyze

        cfg = self.config
        self.model = model
        self.warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))
        self.ramp_steps = int(round(cfg.ramp_epochs * steps_per_epoch))
        self.analysis = analyze(model, self.inputs)
        self.groups = self._eligible(self.analysis)
        if not self.groups:
            from ...errors import ConfigError

            raise ConfigError("pdp channel: no prunable, exact channel group matches the include/exclude patterns")
        slices: Dict[Tuple[str, str], List[Slice]] = {}
        for g in self.groups:
            for m in g.members:
                if m.role in ("out", "norm") and self._is_param(model, m):
                    slices.setdefault((m.module, m.param), []).append((g.id, m.dim, m.index_map))
        for (mod, pname), sl in slices.items():
            module = model.get_submodule(mod)
            parametrize.register_parametrization(module, pname,
                                                 ChannelSoftMask(self, tuple(getattr(module, pname).shape), sl))
        self.set_step(model, self.step)

    @contextlib.contextmanager
    def context(self, model: nn.Module) -> Iterator[None]:
        """While training: recompute the channel masks at every forward (a forward pre-hook that always comes off).
        Afterwards the last masks stay, detached, until `harden`."""
        handle = model.register_forward_pre_hook(lambda mod, args: self.refresh(mod))
        try:
            yield
        finally:
            handle.remove()
            self.current = {gid: v.detach() for gid, v in self.current.items()}

    def on_train_start(self, model: nn.Module, info) -> None:
        self.prepare(model, info.steps_per_epoch)

    def after_backward(self, model: nn.Module, step: int, epoch: int) -> None:
        self.record(step)
        self.set_step(model, step + 1)

    def set_step(self, model: nn.Module, step: int) -> None:
        self.step = step

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {"step": torch.tensor(self.step)}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        if "step" in state and self.model is not None:
            self.set_step(self.model, int(state["step"]))

    # ---------------------------------------------------------------------------------------------- scores
    def scores(self, model: nn.Module) -> Dict[str, torch.Tensor]:
        """Group id -> squared L2 norm [C] of each channel's producing slices (differentiable in the weights)."""
        out = {}
        for g in self.groups:
            total = None
            for m in g.members:
                if m.role != "out" or not self._is_param(model, m, min_dim=2):
                    continue
                module = model.get_submodule(m.module)
                w = (module.parametrizations[m.param].original if parametrize.is_parametrized(module, m.param)
                     else getattr(module, m.param))
                c, k = m.index_map.shape
                sel = w.movedim(m.dim, 0).index_select(0, m.index_map.reshape(-1).to(w.device))
                sq = sel.reshape(c, -1).pow(2).sum(1)
                total = sq if total is None else total + sq
            out[g.id] = total
        return out

    def refresh(self, model: nn.Module) -> None:
        self.current = self.masks_for(model)

    def masks_for(self, model: nn.Module) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def record(self, step: int) -> None:
        """Append (step, share of channels under 0.5, share undecided) over every scored group; count channels
        that climbed back over the threshold after warm-up."""
        if not self.current:
            return
        total = sum(g.size for g in self.groups)
        pruned = undecided = 0
        for gid, v in self.current.items():
            v = v.detach()
            below = v < 0.5
            if step > self.warmup_steps and gid in self._below:
                self.recovery_events += int((self._below[gid] & ~below).sum())
            self._below[gid] = below
            pruned += int(below.sum())
            undecided += int(((v > 0.01) & (v < 0.99)).sum())
        self.history.append([step, pruned / total, undecided / total])

    def summary(self) -> Dict[str, Any]:
        """Recovery events (channels), the first step after the ramp with < 1% of the masks undecided."""
        ramp_end = self.warmup_steps + self.ramp_steps
        binary_at = next((int(s) for s, _, u in self.history if s >= ramp_end and u < 0.01), None)
        last = self.history[-1] if self.history else [None, None, None]
        at_end = next((u for s, _, u in self.history if s >= ramp_end - 1), None)
        return {"recovery_events": self.recovery_events,
                "recovery_share": self.recovery_events / max(1, sum(g.size for g in self.groups)),
                "warmup_steps": self.warmup_steps, "ramp_end_step": ramp_end, "binary_step": binary_at,
                "steps_to_binary": None if binary_at is None else binary_at - ramp_end,
                "undecided_at_ramp_end": at_end, "final_soft_sparsity": last[1], "final_undecided": last[2]}

    def progress_text(self) -> str:
        if not self.history:
            return ""
        _, s, u = self.history[-1]
        return f"channels pruned {s:.1%} undecided {u:.1%}"

    # ---------------------------------------------------------------------------------------------- hardening
    def final_removed(self, model: nn.Module) -> Dict[str, List[int]]:
        """Group id -> the lowest-scoring channels at the final ratio (sorted)."""
        with torch.no_grad():
            scores = self.hard_scores(model)
        out = {}
        for g in self.groups:
            k = channels_to_prune(g, self.config.sparsity, self.config.min_keep)
            if k > 0:
                out[g.id] = sorted(int(i) for i in scores[g.id].topk(k, largest=False).indices)
        return out

    def hard_scores(self, model: nn.Module) -> Dict[str, torch.Tensor]:
        return self.scores(model)

    def harden(self, model: nn.Module, model_spec: Optional[Dict[str, Any]] = None):
        """Remove the lowest-scoring channels physically.

        Returns:
            (pruned model, `PruningPlan`); the model passed in is modified in place (masks baked, channels gone).
        """
        import prunekit
        from ...prune.plan import PruningPlan, describe_inputs, model_fingerprint
        from .artifact import remove_masks

        removed = self.final_removed(model)
        self.current = {gid: v.detach() for gid, v in self.masks_for(model).items()}
        for gid, idx in removed.items():  # the hard mask: removed channels to exactly 0
            vec = self.current[gid].clone()
            vec[idx] = 0.0
            self.current[gid] = vec
        remove_masks(model)
        model.eval()
        plan = PruningPlan(model_fingerprint=model_fingerprint(model), removed=removed,
                           group_sizes={g.id: g.size for g in self.analysis.groups},
                           inputs=describe_inputs(self.inputs), model_spec=dict(model_spec or {}),
                           provenance=PruningPlan.provenance_now(criterion=f"{self.method}-channel",
                                                                 allocator="uniform", ratio=self.config.sparsity))
        pruned = prunekit.apply(model, plan, self.inputs, inplace=True)
        return pruned, plan


class ChannelPDP(ChannelSparsifier):
    """PDP's channel variant (Cho et al. 2023; PQuant's ``_mask_structured_channel``). Config: `PDPConfig`."""

    method = "pdp"

    def masks_for(self, model: nn.Module) -> Dict[str, torch.Tensor]:
        f = ramp(self.step, self.warmup_steps, self.ramp_steps)
        if f <= 0:
            return {}
        out = {}
        for g, (gid, s2) in zip(self.groups, self.scores(model).items()):
            k = channels_to_prune(g, f * self.config.sparsity, self.config.min_keep)
            if k <= 0:
                continue
            t = midpoint_threshold(s2.detach().clamp_min(0).sqrt().unsqueeze(0), k)[0]
            tau = (self.config.temperature * s2.detach().mean()).clamp_min(1e-12)
            out[gid] = torch.sigmoid((s2 - t * t) / tau)
        return out


class ChannelGMP(ChannelSparsifier):
    """Gradual magnitude pruning of whole channels on the cubic schedule (Zhu and Gupta 2017). Config: `GMPConfig`."""

    method = "gmp"

    def __init__(self, config, inputs: Any):
        super().__init__(config, inputs)
        self.hard: Dict[str, torch.Tensor] = {}

    def set_step(self, model: nn.Module, step: int) -> None:
        self.step = step
        f = cubic_update(step, self.warmup_steps, self.ramp_steps, self.config.update_every)
        if f is None:
            return
        with torch.no_grad():
            scores = self.hard_scores(model)
        self.hard = {}
        for g in self.groups:
            k = channels_to_prune(g, f * self.config.sparsity, self.config.min_keep)
            if k > 0:
                self.hard[g.id] = hard_keep(scores[g.id].unsqueeze(0), k)[0].float()

    def hard_scores(self, model: nn.Module) -> Dict[str, torch.Tensor]:
        """Norms of the currently masked weights (pruned channels stay at 0)."""
        scores = self.scores(model)
        return {gid: s * self.hard[gid] if gid in self.hard else s for gid, s in scores.items()}

    def masks_for(self, model: nn.Module) -> Dict[str, torch.Tensor]:
        return dict(self.hard)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {"step": torch.tensor(self.step), **{f"hard.{k}": v for k, v in self.hard.items()}}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        self.hard = {k[5:]: v for k, v in state.items() if k.startswith("hard.")}
        self.step = int(state.get("step", self.step))
