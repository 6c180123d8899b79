"""The one calibration collector: runs a few batches and records what criteria and compensators need.

Criteria declare ``requires`` (``"activations"``, ``"grads"``, ``"fisher"``); `collect` provides exactly that, inside
a scope that always restores the model: hooks are removed, each module's train/eval mode and each parameter's
``requires_grad`` flag and ``.grad`` are put back as they were, even when a batch raises.

Batches are fed with ``model(batch)`` for a tensor, ``model(**batch)`` for a mapping and ``model(batch[0])`` for a
tuple/list (override with ``forward_fn(model, batch)``). The loss for gradients is ``loss_fn(output, batch)``, or
``output.loss`` when the model returns one (Hugging Face models given labels).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch

from ..errors import ConfigError
from ..graph.types import ChannelGroup
from .base import check_requirements

FISHER_MODES = ("batch", "sample")


@dataclass
class Stats:
    """Calibration statistics keyed by qualified module name.

    Attributes:
        activations: module -> [C] mean |output| per output channel (over batch, positions and tokens).
        grads: module -> param -> mean gradient over the backward passes, shaped like the parameter.
        fisher: module -> param -> mean squared gradient (empirical Fisher diagonal), shaped like the parameter.
        provided: what was collected.
        batches / samples: how much data was seen; backward_passes: how many gradients were averaged.
        fisher_mode: ``"batch"`` (one squared gradient per batch) or ``"sample"`` (per sample).
    """

    activations: Dict[str, torch.Tensor] = field(default_factory=dict)
    grads: Dict[str, Dict[str, torch.Tensor]] = field(default_factory=dict)
    fisher: Dict[str, Dict[str, torch.Tensor]] = field(default_factory=dict)
    provided: frozenset = frozenset()
    batches: int = 0
    samples: int = 0
    backward_passes: int = 0
    fisher_mode: str = "batch"


def collect(model: torch.nn.Module, batches: Iterable[Any], requires: Iterable[str],
            loss_fn: Optional[Callable[[Any, Any], torch.Tensor]] = None,
            groups: Optional[Sequence[ChannelGroup]] = None, max_batches: Optional[int] = 16,
            forward_fn: Optional[Callable[[torch.nn.Module, Any], Any]] = None,
            fisher_mode: str = "batch") -> Stats:
    """Run calibration batches and gather the statistics in `requires`.

    Args:
        model: the model (left exactly as found: modes, grad flags, ``.grad`` and hooks).
        batches: an iterable of batches (see the module docstring for how they are fed).
        requires: subset of {"activations", "grads", "fisher"} (usually ``criterion.requires``).
        loss_fn: ``loss_fn(output, batch) -> scalar``; needed for grads/fisher unless the output has ``.loss``.
        groups: restricts activations to the producer modules of the groups' ``"out"`` members and gradients to the
            parameters the groups touch; None means every leaf module with parameters / every parameter.
        max_batches: stop after this many batches (None: use them all).
        forward_fn: ``forward_fn(model, batch) -> output`` replacing the default feeding.
        fisher_mode: ``"batch"`` squares each batch gradient; ``"sample"`` runs one backward per sample.

    Returns:
        a `Stats`; the model runs in eval mode during collection.
    """
    req = check_requirements(requires)
    if fisher_mode not in FISHER_MODES:
        raise ConfigError(f"collect: fisher_mode must be one of {FISHER_MODES}, got {fisher_mode!r}")
    stats = Stats(provided=req, fisher_mode=fisher_mode)
    if not req:
        return stats
    need_grad = bool(req & {"grads", "fisher"})
    forward = forward_fn or _default_forward
    params = _target_params(model, groups) if need_grad else {}
    if need_grad and not params:
        raise ConfigError("collect: gradients were requested but the groups touch no trainable parameter")
    acts = _ActivationRecorder(model, groups) if "activations" in req else None
    sums: Dict[str, torch.Tensor] = {}
    squares: Dict[str, torch.Tensor] = {}
    with _restored(model, params if need_grad else {}), (acts or contextlib.nullcontext()):
        model.eval()
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            batch = _to_device(batch, _device_of(model))
            stats.batches += 1
            stats.samples += _batch_size(batch)
            if not need_grad:
                with torch.no_grad():
                    forward(model, batch)
                continue
            pieces = _split(batch) if fisher_mode == "sample" and "fisher" in req else [batch]
            for piece in pieces:
                loss = _loss(forward(model, piece), piece, loss_fn)
                loss.backward()
                _accumulate(params, sums, squares, "fisher" in req)
                stats.backward_passes += 1
    n = max(stats.backward_passes, 1)
    if "grads" in req:
        stats.grads = _nest({k: v / n for k, v in sums.items()})
    if "fisher" in req:
        stats.fisher = _nest({k: v / n for k, v in squares.items()})
    if acts is not None:
        stats.activations = acts.means()
    return stats


class _ActivationRecorder:
    """Forward hooks accumulating mean |output| per output channel; a context manager that removes them."""

    def __init__(self, model: torch.nn.Module, groups: Optional[Sequence[ChannelGroup]]):
        self.model = model
        self.targets = _producer_layouts(model, groups)
        self.sums: Dict[str, torch.Tensor] = {}
        self.counts: Dict[str, int] = {}
        self.handles: List[Any] = []

    def __enter__(self) -> "_ActivationRecorder":
        for name, (channels, channel_first) in self.targets.items():
            module = self.model.get_submodule(name)
            self.handles.append(module.register_forward_hook(self._hook(name, channels, channel_first)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def _hook(self, name: str, channels: Optional[int], channel_first: bool) -> Callable:
        def hook(module: torch.nn.Module, inputs: Any, output: Any) -> None:
            out = output[0] if isinstance(output, (tuple, list)) and output else output
            if not isinstance(out, torch.Tensor) or not out.is_floating_point() or out.dim() == 0:
                return
            dim = _channel_dim(out, channels, channel_first, name)
            flat = out.detach().abs().float().movedim(dim, 0).reshape(out.shape[dim], -1)
            self.sums[name] = self.sums.get(name, 0) + flat.sum(1).cpu()
            self.counts[name] = self.counts.get(name, 0) + flat.shape[1]

        return hook

    def means(self) -> Dict[str, torch.Tensor]:
        return {name: total / max(self.counts[name], 1) for name, total in self.sums.items()}


def _producer_layouts(model: torch.nn.Module, groups: Optional[Sequence[ChannelGroup]]) -> Dict[str, Tuple]:
    """module name -> (expected output channels or None, channels-first?).

    Layout comes from tensor shapes, not layer types: a producer whose weight has a spatial kernel (ndim >= 3)
    writes channels at dim 1 (N, C, ...); otherwise channels are the last dim (..., C).
    """
    layouts: Dict[str, Tuple] = {}
    if groups is None:
        for name, module in model.named_modules():
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.nn.Parameter) and not list(module.children()):
                layouts[name] = (None, weight.dim() >= 3)
        return layouts
    for group in groups:
        for member in group.members_with_role("out"):
            module = model.get_submodule(member.module)
            tensor = getattr(module, member.param)
            channels = tensor.shape[member.dim]
            weight = getattr(module, "weight", None)
            ndim = max(tensor.dim(), weight.dim() if isinstance(weight, torch.Tensor) else 0)
            layouts[member.module] = (channels, ndim >= 3)
    return layouts


def _channel_dim(out: torch.Tensor, channels: Optional[int], channel_first: bool, name: str) -> int:
    preferred, other = (1, out.dim() - 1) if channel_first and out.dim() >= 2 else (out.dim() - 1, 1)
    if channels is None or out.shape[preferred] == channels:
        return preferred
    if out.dim() >= 2 and out.shape[other] == channels:
        return other
    raise ConfigError(f"collect: output of module '{name}' has shape {tuple(out.shape)}, with no channel dim of "
                      f"size {channels} at dim 1 or -1")


def _target_params(model: torch.nn.Module, groups: Optional[Sequence[ChannelGroup]]) -> Dict[str, torch.nn.Parameter]:
    if groups is None:
        return dict(model.named_parameters())
    params = {}
    for group in groups:
        for member in group.members:
            tensor = getattr(model.get_submodule(member.module), member.param, None)
            if isinstance(tensor, torch.nn.Parameter):
                params[f"{member.module}.{member.param}" if member.module else member.param] = tensor
    return params


@contextlib.contextmanager
def _restored(model: torch.nn.Module, params: Dict[str, torch.nn.Parameter]) -> Iterator[None]:
    """Save modes, grad flags and grads; let only `params` (if any) require grad; put everything back on exit."""
    modes = {m: m.training for m in model.modules()}
    every = list(model.parameters())
    flags = [p.requires_grad for p in every]
    old_grads = [p.grad for p in every]
    try:
        wanted = {id(p) for p in params.values()}
        for p in every:
            p.grad = None
            if wanted:
                p.requires_grad_(id(p) in wanted)
        yield
    finally:
        for p, flag, grad in zip(every, flags, old_grads):
            p.requires_grad_(flag)
            p.grad = grad
        for module, mode in modes.items():
            module.train(mode)


def _accumulate(params: Dict[str, torch.nn.Parameter], sums: Dict[str, torch.Tensor],
                squares: Dict[str, torch.Tensor], want_squares: bool) -> None:
    for key, p in params.items():
        if p.grad is None:
            continue
        g = p.grad.detach().float()
        sums[key] = sums[key] + g if key in sums else g.clone()
        if want_squares:
            squares[key] = squares[key] + g * g if key in squares else g * g
        p.grad = None


def _nest(flat: Dict[str, torch.Tensor]) -> Dict[str, Dict[str, torch.Tensor]]:
    nested: Dict[str, Dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        module, _, param = key.rpartition(".")
        nested.setdefault(module, {})[param] = value
    return nested


def _loss(output: Any, batch: Any, loss_fn: Optional[Callable]) -> torch.Tensor:
    if loss_fn is not None:
        loss = loss_fn(output, batch)
    else:
        loss = getattr(output, "loss", None)
        if loss is None and isinstance(output, Mapping):
            loss = output.get("loss")
        if loss is None:
            raise ConfigError("collect: gradients were requested but no loss_fn was given and the model output "
                              "has no 'loss'")
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ConfigError(f"collect: the loss must be a scalar tensor, got {type(loss).__name__}")
    return loss.reshape(())


def _default_forward(model: torch.nn.Module, batch: Any) -> Any:
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)) and batch:
        return model(batch[0])
    raise ConfigError(f"collect: cannot feed a batch of type {type(batch).__name__}; pass forward_fn")


def _device_of(model: torch.nn.Module) -> Optional[torch.device]:
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else None


def _to_device(batch: Any, device: Optional[torch.device]) -> Any:
    if device is None:
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _batch_size(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (tuple, list)) else []
    for value in values:
        size = _batch_size(value) if isinstance(value, (torch.Tensor, Mapping, tuple, list)) else 0
        if size:
            return size
    return 1


def _split(batch: Any) -> List[Any]:
    """One-sample batches (slices i:i+1 of every tensor with a batch dim) for per-sample Fisher."""
    n = _batch_size(batch)

    def take(value: Any, i: int) -> Any:
        if isinstance(value, torch.Tensor):
            return value[i:i + 1] if value.dim() and value.shape[0] == n else value
        if isinstance(value, Mapping):
            return {k: take(v, i) for k, v in value.items()}
        if isinstance(value, (tuple, list)):
            return type(value)(take(v, i) for v in value)
        return value

    return [take(batch, i) for i in range(n)]
