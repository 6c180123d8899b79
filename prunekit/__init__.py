"""prunekit: structured pruning of PyTorch models that really removes channels, verifies itself, and recovers."""
__version__ = "0.2.0"

from .api import apply, load, plan, prune, save, verify  # noqa: E402,F401
from .graph import Examples, analyze  # noqa: E402,F401
from .graph.types import Budget  # noqa: E402,F401
from .planning import PlanConfig  # noqa: E402,F401
from .prune.plan import PruningPlan  # noqa: E402,F401
