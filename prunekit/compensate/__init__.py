"""Data-free fixes applied around pruning and quantization.

* `bias_fold.fold_removed_channels`: fold the constant output of removed channels into their consumers.
* `udfc.compress` / `udfc.UDFCConfig`: UDFC-style data-free pruning + weight quantization with closed-form
  compensation from BatchNorm statistics (seed paper 12; derivation in docs/udfc.md).

    from prunekit.compensate import UDFCConfig, compress
    result = compress(model, example_inputs, UDFCConfig(keep=0.7, bits=6))
"""
from __future__ import annotations

_LAZY = {"compress": "udfc", "UDFCConfig": "udfc", "CompressResult": "udfc",
         "fold_removed_channels": "bias_fold"}


def __getattr__(name):  # lazy, so importing bias_fold does not import the UDFC machinery
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
