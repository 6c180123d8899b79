"""Channel multiples that keep the kernels of the target hardware full (``round_to="auto"``).

Convolution and matmul kernels work on blocks of channels: oneDNN on an AVX-512 CPU blocks fp32 channels by 16,
on AVX2 by 8; CUDA tensor cores want multiples of 8 for 16-bit types. A layer pruned to a width that is not a
multiple of the block is padded back up inside the kernel, so it keeps the cost of the wider layer while losing its
accuracy. Rounding kept widths to the block size is what turns fewer MACs into lower latency.
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from ..errors import ConfigError

AUTO = "auto"


def simd_channels(device: Optional[Union[str, torch.device]] = None) -> int:
    """The channel block of `device` (default: the CPU): 16 on AVX-512 CPUs, 8 on CUDA and on other CPUs."""
    if torch.device(device or "cpu").type == "cpu":
        return 16 if str(torch.backends.cpu.get_cpu_capability()).upper().startswith("AVX512") else 8
    return 8


def resolve_round_to(round_to: Union[int, str, None], model: Optional[torch.nn.Module] = None) -> Optional[int]:
    """An int (or None) for `round_to`; ``"auto"`` becomes the channel block of the device the model's weights are
    on. Integers given as strings (from configs and the CLI) are accepted; anything else, or an int below 1, raises
    `ConfigError`."""
    if round_to is None:
        return None
    text = str(round_to).strip().lower()
    if text == AUTO:
        param = next(iter(model.parameters()), None) if model is not None else None
        return simd_channels(param.device if param is not None else None)
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"round_to must be >= 1 or 'auto', got {round_to!r}")
    return value
