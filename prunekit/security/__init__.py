"""Side-channel security of pruned inference: a power/EM leakage simulator of a first layer run one multiply-
accumulate per time step, correlation power analysis, and MACPruning's defence evaluated against it (paper 6)."""
from .cpa import correlation_scores, traces_needed  # noqa: F401
from .leakage import LayerGeometry, hamming_weight8, mac_schedule, quantize_int8, simulate_traces  # noqa: F401
