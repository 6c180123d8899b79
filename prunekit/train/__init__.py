"""The reference training loop, checkpoints, regularizers and distillation (imported lazily)."""
from __future__ import annotations

_EXPORTS = {
    "TrainConfig": "loop", "TrainHook": "loop", "TrainResult": "loop", "LoopInfo": "loop", "train": "loop",
    "save_checkpoint": "checkpoint", "load_checkpoint": "checkpoint", "latest_checkpoint": "checkpoint",
    "BNL1": "regularizers.bn_l1", "BNL1Config": "regularizers.bn_l1",
    "GroupLasso": "regularizers.group_lasso", "GroupLassoConfig": "regularizers.group_lasso",
    "Distiller": "distill.taps", "DistillTerm": "distill.taps", "FeatureTaps": "distill.taps",
    "PDPSparsifier": "pdp.pdp", "PDPConfig": "pdp.config", "GMPSparsifier": "pdp.gmp", "MaskSet": "pdp.artifact",
}


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(name)
