"""KV-cache channel compression for Hugging Face causal LMs (ThinK, CSKV), by name."""
from ..registry import registry

PRESSES = registry("press")
PRESSES.lazy("think", "prunekit.kvcache.think:ThinKPress", "ThinK: query-driven key-channel pruning (compact storage)")
PRESSES.lazy("cskv", "prunekit.kvcache.cskv:CSKVPress", "CSKV: low-rank bi-branch K/V cache")


def calibrate(model, tokenizer=None, data=None, method: str = "cskv", density: float = 0.2, bits=None, **kwargs):
    """A calibrated KV press in one call (recommended settings); see `prunekit.kvcache.calibrated.calibrate`."""
    from .calibrated import calibrate as _calibrate

    return _calibrate(model, tokenizer, data=data, method=method, density=density, bits=bits, **kwargs)
