"""The TAS search wrapper: a masked-channel supernet over any engine-analysable model.

The wrapped model runs at full width. Each searched group's channels are multiplied, after the group's BatchNorms,
by a soft mask: ``sum_j w_j * [channel < c_j]`` over the two candidate widths c_j drawn for this forward pass (the
paper's Gumbel sampling of I = 2 candidates, weights w_j = softmax of their perturbed logits). A consumer therefore
sees candidate j's first c_j channels and zeros beyond them, which aligns candidates of different widths channel by
channel: the masked-channel form of the paper's channel-wise interpolation (CWI) on a shared supernet (the paper
aligns by adaptive pooling along channels; the derived network keeps the first c channels either way, see
methods.md section 7(f)).

Per-candidate BatchNorm (the paper's ``BNs``): every BatchNorm that belongs to exactly one searched group and covers
its channels is replaced by `CandidateBatchNorm`, one BN per candidate width; a forward pass normalises with the
sampled candidates' own BNs, so running statistics never mix widths. A group with no such BatchNorm (a conv without
BN, or a BN shared by several groups) is masked at its producers' outputs (or the shared BN's output) instead.

Modes (`TASSupernet.mode`): ``sample`` (training: fresh Gumbel draw every forward), ``argmax`` (the derived widths,
one candidate per group with weight 1), ``fixed`` (widths set by `set_widths`).
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError
from .cost import ExpectedMacs
from .space import SearchableGroup

Selection = Tuple[torch.Tensor, torch.Tensor]  # (candidate indices [k], weights [k])


def _position_masks(index_map: torch.Tensor, widths: Sequence[int], length: int) -> torch.Tensor:
    """[n_candidates, length]: 1 at the positions of group channels below each width, and at positions the group
    does not own."""
    index_map = index_map.reshape(index_map.shape[0], -1)
    owned = torch.zeros(length, dtype=torch.bool)
    owned[index_map.reshape(-1)] = True
    masks = (~owned).float().repeat(len(widths), 1)
    for j, w in enumerate(widths):
        masks[j, index_map[:w].reshape(-1)] = 1.0
    return masks


def _soft_mask(masks: torch.Tensor, selection: Selection) -> torch.Tensor:
    idx, weights = selection
    return (weights[:, None] * masks[idx]).sum(0)


class _Selections(dict):
    """group id -> `Selection` of the current forward pass (shared by the supernet and its masking sites)."""


class CandidateBatchNorm(nn.Module):
    """One BatchNorm per candidate width of a group, mixed under the group's current selection.

    ``y = sum_j w_j * BN_j(x) * mask_j`` over the selected candidates j; only the selected BNs run (and update their
    running statistics).

    Args:
        bn: the BatchNorm it replaces (each candidate BN starts as a copy of it).
        group_id: the searched group. index_map: that group's positions in the BN's channels [size, k].
        widths: candidate widths. selections: the supernet's shared selections.

    Shapes: x [B, C, ...] -> [B, C, ...].
    """

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, group_id: str, index_map: torch.Tensor,
                 widths: Sequence[int], selections: _Selections):
        super().__init__()
        self.group_id = group_id
        self.bns = nn.ModuleList(copy.deepcopy(bn) for _ in widths)
        self.register_buffer("masks", _position_masks(index_map, widths, bn.num_features), persistent=False)
        object.__setattr__(self, "_selections", selections)  # shared, not a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx, weights = self._selections[self.group_id]
        shape = (1, -1) + (1,) * (x.dim() - 2)
        out = None
        for j, w in zip(idx.tolist(), weights.unbind(0)):
            term = self.bns[j](x) * (w * self.masks[j]).view(shape)
            out = term if out is None else out + term
        return out


class TASSupernet(nn.Module):
    """A model put into the TAS search space.

    Args:
        model: the model to search (copied; the copy's BatchNorms are replaced). Its weights are the supernet's
            starting weights (pretrained or fresh).
        searched: the searched groups (`prunekit.widths.tas.space.searchable_groups` of its analysis).
        inputs: example inputs [1, ...] (per-example MACs of the cost model).
        init_std: std of the N(0, std) logit initialisation (the paper: 0.01).

    Attributes:
        model: the wrapped copy. logits: one parameter [n_candidates] per searched group (`ids` order).
        cost: the differentiable `ExpectedMacs`.
    """

    def __init__(self, model: nn.Module, searched: Sequence[SearchableGroup], inputs: Any, init_std: float = 0.01):
        super().__init__()
        self.searched = list(searched)
        self.ids = [s.id for s in self.searched]
        self.cost = ExpectedMacs(model, self.searched, inputs)
        self.model = copy.deepcopy(model)
        self.logits = nn.ParameterList(nn.Parameter(torch.randn(len(s.widths)) * init_std) for s in self.searched)
        for s in self.searched:
            self.register_buffer(f"widths_{self.ids.index(s.id)}", torch.tensor(s.widths, dtype=torch.float32),
                                 persistent=False)
        self.mode = "sample"
        self.tau = 5.0
        self.selections = _Selections()
        self._fixed: Dict[str, int] = {}
        self._hooks: List[Any] = []
        self.sites = self._install()

    # ------------------------------------------------------------------------------------------------ install
    def _install(self) -> Dict[str, List[str]]:
        """Replace owned BatchNorms, hook the other masking sites; returns group id -> masked module names."""
        owners: Dict[str, List[str]] = {}
        for s in self.searched:
            for m in s.group.members:
                if m.param == "weight" and m.dim == 0 and isinstance(self.model.get_submodule(m.module),
                                                                     nn.modules.batchnorm._BatchNorm):
                    owners.setdefault(m.module, []).append(s.id)
        sites: Dict[str, List[str]] = {}
        for s in self.searched:
            bns = [m for m in s.group.members if m.param == "weight" and m.dim == 0 and m.module in owners]
            if bns:
                for m in bns:
                    bn = self.model.get_submodule(m.module)
                    covered = m.index_map.numel() == bn.num_features
                    if owners[m.module] == [s.id] and covered:
                        self._replace(m.module, CandidateBatchNorm(bn, s.id, m.index_map, s.widths,
                                                                   self.selections))
                    else:
                        self._hook(m.module, s, m.index_map, bn.num_features)
                    sites.setdefault(s.id, []).append(m.module)
                continue
            producers = [m for m in s.group.members if m.role == "out" and m.param == "weight" and m.dim == 0]
            if not producers:
                raise ConfigError(f"tas supernet: group {s.id} has no BatchNorm and no producing layer to mask")
            for m in producers:
                module = self.model.get_submodule(m.module)
                self._hook(m.module, s, m.index_map, int(module.weight.shape[0]),
                           channel_dim=-1 if isinstance(module, nn.Linear) else 1)
                sites.setdefault(s.id, []).append(m.module)
        return sites

    def _replace(self, name: str, module: nn.Module) -> None:
        parent, _, child = name.rpartition(".")
        setattr(self.model.get_submodule(parent) if parent else self.model, child, module)

    def _hook(self, name: str, s: SearchableGroup, index_map: torch.Tensor, length: int, channel_dim: int = 1):
        masks = _position_masks(index_map, s.widths, length)
        selections, gid = self.selections, s.id

        def apply(module, args, out):
            mask = _soft_mask(masks.to(out.device), selections[gid])
            shape = [1] * out.dim()
            shape[channel_dim] = -1
            return out * mask.view(shape)

        self._hooks.append(self.model.get_submodule(name).register_forward_hook(apply))

    # ------------------------------------------------------------------------------------------------ parameters
    def arch_parameters(self) -> List[nn.Parameter]:
        """The width logits (the architecture step's parameters)."""
        return list(self.logits)

    def weight_parameters(self) -> List[nn.Parameter]:
        """The wrapped model's parameters (the weight step's parameters)."""
        return list(self.model.parameters())

    def widths_of(self, i: int) -> torch.Tensor:
        return getattr(self, f"widths_{i}")

    # ------------------------------------------------------------------------------------------------ selections
    def probabilities(self) -> Dict[str, torch.Tensor]:
        """group id -> softmax of its logits [n_candidates]."""
        return {gid: F.softmax(a, dim=0) for gid, a in zip(self.ids, self.logits)}

    def expected_kept(self) -> Dict[str, torch.Tensor]:
        """group id -> expected kept channels ``sum_j p_j c_j`` (differentiable)."""
        return {gid: (p * self.widths_of(i)).sum() for i, (gid, p) in enumerate(self.probabilities().items())}

    def argmax_widths(self) -> Dict[str, int]:
        """group id -> the most probable candidate width (the derived configuration)."""
        return {s.id: int(s.widths[int(a.detach().argmax())]) for s, a in zip(self.searched, self.logits)}

    def expected_macs(self) -> torch.Tensor:
        """Expected MACs per example under the current distributions (differentiable in the logits)."""
        return self.cost(self.expected_kept())

    def macs_of(self, widths: Dict[str, int]) -> float:
        """MACs per example of a width configuration (group id -> kept channels; absent groups stay full)."""
        with torch.no_grad():
            return float(self.cost({s.id: torch.tensor(float(widths.get(s.id, s.size))) for s in self.searched}))

    def set_widths(self, widths: Dict[str, int]) -> None:
        """Switch to ``fixed`` mode at these widths (each must be one of its group's candidates)."""
        for s in self.searched:
            w = int(widths.get(s.id, s.widths[-1]))
            if w not in s.widths:
                raise ConfigError(f"tas supernet: width {w} of group {s.id} is not a candidate ({list(s.widths)})")
        self._fixed = {s.id: int(widths.get(s.id, s.widths[-1])) for s in self.searched}
        self.mode = "fixed"

    def _select(self) -> None:
        self.selections.clear()
        for i, (s, a) in enumerate(zip(self.searched, self.logits)):
            if self.mode == "sample":
                self.selections[s.id] = gumbel_select2(a, self.tau)
            else:
                w = self._fixed[s.id] if self.mode == "fixed" else s.widths[int(a.detach().argmax())]
                self.selections[s.id] = (torch.tensor([s.widths.index(w)]), torch.ones(1, device=a.device))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.mode not in ("sample", "argmax", "fixed"):
            raise ConfigError(f"tas supernet: mode must be sample, argmax or fixed, got {self.mode!r}")
        self._select()
        return self.model(*args, **kwargs)


def gumbel_select2(logits: torch.Tensor, tau: float, eps: float = 1e-7) -> Selection:
    """Two distinct candidates drawn from the Gumbel-perturbed distribution at temperature `tau`, and their mixing
    weights (softmax over their perturbed logits), as in the paper's sampling.

    Args:
        logits: [n] (n >= 2) architecture logits of one group.

    Returns:
        (indices [2], weights [2]); the weights carry gradients to `logits`.
    """
    logp = F.log_softmax(logits, dim=0)
    u = torch.rand_like(logp).clamp_(1e-10, 1.0 - 1e-7)
    perturbed = (logp - torch.log(-torch.log(u))) / tau
    with torch.no_grad():  # the draw itself is not differentiated; it runs on the CPU (methods.md 7(f))
        probs = F.softmax(perturbed, dim=0).cpu() + eps
        idx = torch.multinomial(probs, 2, replacement=False).to(logits.device)
    return idx, F.softmax(perturbed[idx], dim=0)
