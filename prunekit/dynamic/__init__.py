"""Input-dependent pruning: FTWT dynamic channel masks (paper 9) and MACPruning input-pixel masks (paper 6).

Run-time gates, not removal: the model keeps every weight and decides per input which work to skip.
"""
from .ground_truth import channel_strength, mass_labels, uniform_labels  # noqa: F401
from .model import DynamicChannelModel, DynamicConfig  # noqa: F401
from .sites import MaskSite, find_sites  # noqa: F401


def attach(model, inputs, config=None, input_shape=None) -> DynamicChannelModel:
    """Find `model`'s mask sites (engine channel groups) and wrap it with FTWT predictors.

    Args:
        model: an engine-analysable CNN.
        inputs: one example input ``[1, C, H, W]``.
        config: a `DynamicConfig` (default: mass 0.9, decoupled).
        input_shape: one input without batch (default: ``inputs.shape[1:]``).
    """
    config = config or DynamicConfig()
    sites, dense = find_sites(model, inputs, config.gate_tied)
    return DynamicChannelModel(model, sites, config, dense,
                               tuple(input_shape or inputs.shape[1:]))
