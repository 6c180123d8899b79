"""A wrapper giving any model a flat tuple of output tensors, so exporters and comparisons agree on the outputs."""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import torch
from torch import nn


def tensor_leaves(out: Any) -> List[torch.Tensor]:
    """Every tensor in an output structure (tensor, tuple, dict, Hugging Face ModelOutput), in pytree order."""
    from torch.utils._pytree import tree_flatten

    if hasattr(out, "to_tuple"):  # ModelOutput: its set fields, in order
        out = out.to_tuple()
    return [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]


def positional(inputs: Any) -> Tuple[Tuple[torch.Tensor, ...], Sequence[str]]:
    """(positional tensors, keyword names or empty): a dict of inputs is passed by name, in its order."""
    if isinstance(inputs, torch.Tensor):
        return (inputs,), ()
    if isinstance(inputs, dict):
        return tuple(inputs.values()), tuple(inputs)
    return tuple(inputs), ()


class FlatOutputs(nn.Module):
    """``FlatOutputs(model, names)(*tensors)`` -> tuple of output tensors.

    Hugging Face models with a KV cache are called with ``use_cache=False``: the cache object is not an output a
    deployed graph returns.
    """

    def __init__(self, model: nn.Module, names: Sequence[str] = ()):
        super().__init__()
        self.model = model
        self.names = tuple(names)
        config = getattr(model, "config", None)
        self.extra: Dict[str, Any] = {"use_cache": False} if getattr(config, "use_cache", None) is not None else {}

    def forward(self, *args: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if self.names:
            out = self.model(**dict(zip(self.names, args)), **self.extra)
        else:
            out = self.model(*args, **self.extra)
        return tuple(tensor_leaves(out))


def relative_error(reference: Sequence[torch.Tensor], other: Sequence[torch.Tensor]) -> float:
    """max |a - b| / max |a| over all outputs (0 when identical); inf when the outputs' count or shapes differ."""
    if len(reference) != len(other):
        return float("inf")
    worst = 0.0
    for a, b in zip(reference, other):
        a, b = torch.as_tensor(a).detach().double(), torch.as_tensor(b).detach().double()
        if a.shape != b.shape:
            return float("inf")
        if a.numel():
            worst = max(worst, float((a - b).abs().max()) / max(float(a.abs().max()), 1e-12))
    return worst


@contextlib.contextmanager
def quiet_exporters() -> Iterator[None]:
    """Silence the exporters' progress prints, warnings and log lines (graph dumps on failure), restored after; the
    caller reports failures as one clear error instead."""
    import io
    import logging
    import warnings

    disabled = logging.root.manager.disable
    logging.disable(logging.ERROR)  # torch re-configures its own loggers during export; this holds for all of them
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(disabled)
