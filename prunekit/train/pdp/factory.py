"""One constructor for every sparsifier: method (pdp / gmp / oneshot) x pattern (unstructured / N:M / channel)."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

from ...errors import ConfigError

METHODS = ("pdp", "gmp", "oneshot")


def make_sparsifier(method: str, config, inputs: Optional[Any] = None):
    """Build the hook for `method` from a `SparsityConfig` (or subclass): ``pdp`` -> PDP, ``gmp`` -> gradual
    magnitude pruning, ``oneshot`` -> magnitude pruning at step 0 (no warm-up, no ramp) then frozen masks.

    Args:
        method: one of `METHODS`.
        config: settings; fields the method does not use are ignored.
        inputs: example inputs (channel pattern only: tracing and verification).
    """
    from .config import GMPConfig, PDPConfig

    if method not in METHODS:
        raise ConfigError(f"pdp: method must be one of {METHODS}, got {method!r}")
    base = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    if method == "pdp":
        cfg = PDPConfig(**{k: v for k, v in base.items() if k in {f.name for f in dataclasses.fields(PDPConfig)}})
    else:
        cfg = GMPConfig(**{k: v for k, v in base.items() if k in {f.name for f in dataclasses.fields(GMPConfig)}})
        if method == "oneshot":
            cfg = dataclasses.replace(cfg, warmup_epochs=0.0, ramp_epochs=0.0)
    if cfg.kind == "channel":
        if inputs is None:
            raise ConfigError("pdp: the channel pattern needs example inputs to trace the channel groups")
        from .channel import ChannelGMP, ChannelPDP

        return (ChannelPDP if method == "pdp" else ChannelGMP)(cfg, inputs)
    from .gmp import GMPSparsifier
    from .pdp import PDPSparsifier

    return PDPSparsifier(cfg) if method == "pdp" else GMPSparsifier(cfg)
