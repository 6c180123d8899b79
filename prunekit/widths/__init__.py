"""Choosing widths before or instead of pruning: a `WidthConfig` (the kept width of every channel group) and the
methods that produce one (PreCropping in `prunekit.widths.precrop`, TAS in `prunekit.widths.tas`).

    config = WidthConfig.from_fractions(prunekit.analyze(model, x), {"layer1.0.conv1": 0.5}, model=model, inputs=x)
    small = build_model(config, model, x, seed=0)        # fresh init, engine-built
    save_width_model(small, "out/")                      # prunekit.load("out/") rebuilds it
"""
from .build import build_model, reinitialise, save_width_model, widen_groups  # noqa: F401
from .config import WIDTH_CONFIG_KIND, WidthConfig  # noqa: F401

__all__ = ["WIDTH_CONFIG_KIND", "WidthConfig", "build_model", "reinitialise", "save_width_model", "widen_groups"]
