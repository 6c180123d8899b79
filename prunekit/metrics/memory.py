"""Peak memory of one forward pass, above what was allocated before it (weights and inputs excluded).

CPU: the torch profiler with ``profile_memory=True`` records every allocation and free of the forward; the running
sum of their sizes, in time order, peaks at the figure reported (``method="profiler"``). If that profiler API is not
available, the growth of the process's maximum resident set size (``resource.getrusage``) is reported instead
(``method="rusage"``; coarse, and zero when the forward stays under an earlier peak).
CUDA: ``torch.cuda.max_memory_allocated`` after resetting the peak, minus the memory allocated before.
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterator, List, Sequence, Tuple, Union

import torch

Inputs = Union[torch.Tensor, Sequence[torch.Tensor]]


@dataclass(frozen=True)
class MemoryResult:
    """``peak_bytes``: the most memory held at once during the forward beyond what existed before it."""

    peak_bytes: int
    method: str
    device: str

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / 2**20

    def to_dict(self) -> Dict[str, Any]:
        return {**asdict(self), "peak_mib": self.peak_mib}


def _as_tuple(inputs: Inputs) -> Tuple[torch.Tensor, ...]:
    return (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)


def _allocation_events(prof) -> List[Tuple[int, int]]:
    """(time ns, signed bytes) of each CPU allocation (+) and free (-) the profiler saw."""
    from torch._C._profiler import _EventType

    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        if event.tag == _EventType.Allocation and str(event.extra_fields.device).startswith("cpu"):
            events.append((event.start_time_ns, int(event.extra_fields.alloc_size)))
    return sorted(events)


def _peak_of(events: List[Tuple[int, int]]) -> int:
    live = peak = 0
    for _, size in events:
        live += size
        peak = max(peak, live)
    return peak


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for the block (the profiler's C++ side prints start/stop lines)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _cpu_peak(model: torch.nn.Module, args: Tuple[torch.Tensor, ...]) -> MemoryResult:
    from torch.profiler import ProfilerActivity, profile

    try:
        with _native_stderr_silenced():
            with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                model(*args)
        return MemoryResult(_peak_of(_allocation_events(prof)), "profiler", "cpu")
    except (AttributeError, ImportError, RuntimeError):
        import resource

        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with torch.inference_mode():
            model(*args)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return MemoryResult(max(0, after - before) * 1024, "rusage", "cpu")


def _cuda_peak(model: torch.nn.Module, args: Tuple[torch.Tensor, ...], device: torch.device) -> MemoryResult:
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        model(*args)
    torch.cuda.synchronize(device)
    return MemoryResult(int(torch.cuda.max_memory_allocated(device) - base), "cuda_max_memory_allocated",
                        str(device))


def peak_forward_memory(model: torch.nn.Module, inputs: Inputs) -> MemoryResult:
    """Peak extra memory of ``model(*inputs)`` under ``torch.inference_mode`` (activations and workspaces).

    Args:
        model: run as it is, on the inputs' device.
        inputs: a tensor (e.g. ``[B, 3, H, W]``) or a sequence of positional tensors.
    """
    args = _as_tuple(inputs)
    device = next((t.device for t in args if t.is_cuda), None)
    return _cuda_peak(model, args, device) if device is not None else _cpu_peak(model, args)
