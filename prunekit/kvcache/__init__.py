"""KV-cache channel compression for Hugging Face causal LMs (ThinK, CSKV), by name."""
from ..registry import registry

PRESSES = registry("press")
PRESSES.lazy("think", "prunekit.kvcache.think:ThinKPress", "ThinK: query-driven key-channel pruning (compact storage)")
PRESSES.lazy("cskv", "prunekit.kvcache.cskv:CSKVPress", "CSKV: low-rank bi-branch K/V cache")
