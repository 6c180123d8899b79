"""Feature taps, width adapters and the `Distiller` training hook.

`FeatureTaps(model, patterns)` is a context manager: on entry it registers forward hooks on every module whose
qualified name matches one of the glob patterns, during the block it collects their outputs by name, and on exit it
removes every hook, also when the block raises.

`Distiller(teacher, terms)` is a `TrainHook`: for each batch it runs the frozen teacher (eval mode, no grad) on the
same inputs, pairs the tapped student and teacher features of every `DistillTerm` in module order, passes student
features through a trainable adapter where the loss needs equal widths and the widths differ, and returns
``sum_terms weight(step) * loss`` as the loop's ``extra_loss``.
"""
from __future__ import annotations

import contextlib
import fnmatch
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ...errors import ConfigError
from ..loop import batch_targets, forward_batch
from ..regularizers.schedules import make_schedule
from . import DISTILL_LOSSES


def _first_tensor(output: Any) -> Optional[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return output
    for attr in ("logits", "last_hidden_state"):
        if isinstance(getattr(output, attr, None), torch.Tensor):
            return getattr(output, attr)
    if isinstance(output, (list, tuple)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    return None


def match_modules(model: nn.Module, patterns: Sequence[str]) -> List[str]:
    """Qualified module names matching any glob pattern, in model order; a pattern matching nothing is an error."""
    names = [n for n, _ in model.named_modules() if n]
    for p in patterns:
        if not any(fnmatch.fnmatchcase(n, p) for n in names):
            raise ConfigError(f"feature taps: pattern {p!r} matches no module of {type(model).__name__} "
                              f"(some names: {names[:8]})")
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


class FeatureTaps:
    """Collect module outputs by qualified name while the context is open.

    Args:
        model: the module to tap.
        patterns: glob patterns over qualified module names (``"layer*.0"``, ``"neck.out*"``).
        detach: store detached outputs (for teachers).

    Attributes:
        names: tapped module names in model order.
        features: name -> output tensor of the latest forward (tuple outputs give their first tensor).
    """

    def __init__(self, model: nn.Module, patterns: Sequence[str], detach: bool = False):
        self.model, self.patterns, self.detach = model, tuple(patterns), detach
        self.names: List[str] = []
        self.features: Dict[str, torch.Tensor] = {}
        self._handles: list = []

    def __enter__(self) -> "FeatureTaps":
        self.names = match_modules(self.model, self.patterns)
        try:
            for name in self.names:
                self._handles.append(self.model.get_submodule(name).register_forward_hook(self._hook(name)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def _hook(self, name: str):
        def record(module, inputs, output):
            tensor = _first_tensor(output)
            if tensor is None:
                raise ConfigError(f"feature taps: module {name!r} returned {type(output).__name__}, not a tensor")
            self.features[name] = tensor.detach() if self.detach else tensor

        return record

    def remove(self) -> None:
        """Remove every hook (idempotent) and drop the stored features."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.features.clear()

    def get(self, names: Sequence[str]) -> List[torch.Tensor]:
        missing = [n for n in names if n not in self.features]
        if missing:
            raise ConfigError(f"feature taps: no output recorded for {missing}; did the forward pass reach them?")
        return [self.features[n] for n in names]


def make_adapter(student: torch.Tensor, teacher: torch.Tensor) -> Optional[nn.Module]:
    """A bias-free 1x1 conv ([N, C, H, W]) or Linear (2-D [N, C] / 3-D [N, T, C], last dim) mapping the student's
    width to the teacher's; None when the widths already agree."""
    if student.dim() == 4:
        cs, ct = student.shape[1], teacher.shape[1]
        return None if cs == ct else nn.Conv2d(cs, ct, kernel_size=1, bias=False)
    if student.dim() in (2, 3):
        cs, ct = student.shape[-1], teacher.shape[-1]
        return None if cs == ct else nn.Linear(cs, ct, bias=False)
    raise ConfigError(f"adapter: unsupported feature rank {student.dim()} (shape {tuple(student.shape)})")


@dataclass
class DistillTerm:
    """One distillation loss over paired layers.

    Attributes:
        loss: a `distill_loss` registry name (``logit_kd``, ``attention``, ``cwd``).
        loss_args: options of the loss's config (``{"tau": 2.0}``, ``{"betas": [1e6, 1e3]}``).
        student: module-name patterns of the student; empty = the model outputs (logits).
        teacher: patterns of the teacher; None = the same as `student`.
        weight: the term's weight (start value of the schedule).
        schedule: ``constant`` | ``cosine_decay`` | ``linear_decay`` (over training steps).
        schedule_args: schedule options (``{"final": 0.1}`` for cosine_decay).
    """

    loss: str = "cwd"
    loss_args: Dict[str, Any] = field(default_factory=dict)
    student: Tuple[str, ...] = ()
    teacher: Optional[Tuple[str, ...]] = None
    weight: float = 1.0
    schedule: str = "constant"
    schedule_args: Dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        self.student = tuple(self.student)
        self.teacher = self.student if self.teacher is None else tuple(self.teacher)
        if bool(self.student) != bool(self.teacher):
            raise ConfigError(f"DistillTerm({self.loss}): give layer patterns for both student and teacher, or neither")
        if self.weight < 0:
            raise ConfigError(f"DistillTerm({self.loss}): weight must be >= 0, got {self.weight}")


def _key(name: str) -> str:
    return name.replace(".", "__") or "__output__"


class Distiller(nn.Module):
    """Teacher-to-student distillation hook (``on_train_start``, ``context``, ``extra_loss``, ``parameters``).

    Args:
        teacher: the frozen teacher (kept in eval mode, no gradients, moved to the student's device).
        terms: the distillation terms.
    """

    def __init__(self, teacher: nn.Module, terms: Sequence[DistillTerm]):
        super().__init__()
        if not terms:
            raise ConfigError("Distiller: no distillation term given")
        self.teacher = [teacher.eval().requires_grad_(False)]  # in a list: not a submodule, not in state_dict
        self.terms = list(terms)
        self.losses = nn.ModuleList([DISTILL_LOSSES.get(t.loss)(**t.loss_args) for t in self.terms])
        self.weights = [make_schedule(t.schedule, t.weight, **t.schedule_args) for t in self.terms]
        self.adapters = nn.ModuleDict()
        self.total_steps = 1
        self._taps: Optional[Tuple[FeatureTaps, FeatureTaps]] = None
        self._built = False

    # ----------------------------------------------------------------------------------------- loop protocol
    def on_train_start(self, model: nn.Module, info) -> None:
        self.total_steps = info.total_steps
        self.teacher[0].to(info.device)
        with self.context(model):
            was_training = model.training
            model.eval()
            with torch.no_grad():
                outputs = forward_batch(model, info.example_batch)
                self._pairs(model, info.example_batch, outputs)  # builds the adapters
            model.train(was_training)
        self.adapters.to(info.device)

    @contextlib.contextmanager
    def context(self, model: nn.Module) -> Iterator[None]:
        s_pat = tuple(p for t in self.terms for p in t.student)
        t_pat = tuple(p for t in self.terms for p in t.teacher)
        with FeatureTaps(model, s_pat) as s_taps, FeatureTaps(self.teacher[0], t_pat, detach=True) as t_taps:
            self._taps = (s_taps, t_taps)
            try:
                yield
            finally:
                self._taps = None

    def extra_loss(self, model: nn.Module, batch: Any, outputs: Any, step: int) -> torch.Tensor:
        total = None
        for term, loss, weight, (names, s_feats, t_feats) in zip(
                self.terms, self.losses, self.weights, self._pairs(model, batch, outputs)):
            if loss.kind == "logits":
                targets = batch_targets(batch)
                value = sum(loss(s, t, targets) for s, t in zip(s_feats, t_feats))
            else:
                value = loss(s_feats, t_feats, names)
            w = float(weight.rate(step, self.total_steps))
            total = w * value if total is None else total + w * value
        return total

    # ------------------------------------------------------------------------------------------- helpers
    def _pairs(self, model: nn.Module, batch: Any, outputs: Any) -> List[Tuple[List[str], list, list]]:
        """Per term: (names, student features after adapters, teacher features)."""
        if self._taps is None:
            raise ConfigError("Distiller: use inside `with distiller.context(model):` (the training loop does this)")
        s_taps, t_taps = self._taps
        with torch.no_grad():
            t_out = _first_tensor(forward_batch(self.teacher[0], batch))
        result = []
        for term, loss in zip(self.terms, self.losses):
            if term.student:
                s_names, t_names = match_modules(model, term.student), match_modules(self.teacher[0], term.teacher)
                if len(s_names) != len(t_names):
                    raise ConfigError(f"Distiller({term.loss}): student layers {s_names} and teacher layers "
                                      f"{t_names} do not pair up")
                s_feats, t_feats = s_taps.get(s_names), t_taps.get(t_names)
            else:
                s_names = [""]
                s_feats, t_feats = [_first_tensor(outputs)], [t_out]
            if loss.needs_equal_channels:
                s_feats = [self._adapt(n, s, t) for n, s, t in zip(s_names, s_feats, t_feats)]
            result.append((s_names, s_feats, t_feats))
        return result

    def _adapt(self, name: str, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        key = _key(name)
        if key not in self.adapters:
            adapter = make_adapter(student, teacher)
            if adapter is None:
                return student
            self.adapters[key] = adapter.to(student.device)
        return self.adapters[key](student)
