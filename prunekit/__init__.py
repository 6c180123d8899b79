"""prunekit: structured pruning of PyTorch models that really removes channels, verifies itself, and recovers."""
__version__ = "0.1.0"
