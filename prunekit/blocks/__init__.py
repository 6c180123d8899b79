"""Block-structured (semi-structured) pruning of linear weights: LPViT allocation and a block-sparse linear layer.

See `prunekit.blocks.lpvit` for the method and the order of its steps.
"""
from .allocate import AllocationResult, macs_cost, params_cost, slope_match, uniform
from .cost import LatencyTable, measure_latency_table
from .curves import layer_curve, layer_curves
from .layout import BlockShape, BlockTarget, find_targets
from .lpvit import LPViTConfig, plan_blocks
from .measured import measured_curves
from .module import BlockSparseLinear
from .plan import BlockPlan, convert
from .recover import RecoveryConfig, recover
from .stats import collect_block_stats, output_energy

__all__ = ["AllocationResult", "BlockPlan", "BlockShape", "BlockSparseLinear", "BlockTarget", "LPViTConfig",
           "LatencyTable", "collect_block_stats", "convert", "find_targets", "layer_curve", "layer_curves",
           "macs_cost", "measure_latency_table", "measured_curves", "output_energy", "params_cost", "plan_blocks",
           "recover", "RecoveryConfig", "slope_match", "uniform"]
