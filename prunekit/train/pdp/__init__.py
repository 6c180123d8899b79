"""PDP (parameter-free differentiable pruning, paper 4) and gradual magnitude pruning as training-loop hooks.

    pdp = PDPSparsifier(PDPConfig(pattern="2:4", warmup_epochs=1, ramp_epochs=2))
    train(model, data, TrainConfig(epochs=4), hooks=[pdp])
    masks = pdp.harden(model)          # hard masks, frozen on the model for fine-tuning
    train(model, data, TrainConfig(epochs=1))
    finish(model); masks.save("out/")  # bit-packed masks.safetensors + masks.json

The channel pattern (`channel.ChannelPDP`, `channel.ChannelGMP`) ends in a `PruningPlan` removed by the engine.
"""
from __future__ import annotations

_EXPORTS = {
    "PDPConfig": "config", "GMPConfig": "config", "SparsityConfig": "config", "parse_pattern": "config",
    "PDPSparsifier": "pdp", "PDPSoftMask": "pdp", "GMPSparsifier": "gmp", "finish": "base",
    "MaskSet": "artifact", "MaskEntry": "artifact", "FrozenMask": "artifact",
    "ChannelPDP": "channel", "ChannelGMP": "channel", "make_sparsifier": "factory",
}


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(name)
