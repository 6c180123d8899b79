"""Allocation policies, one file each, by name: turn scores and a budget into how many units each group loses."""
from ..registry import registry

ALLOCATORS = registry("allocator")
for _name, _target, _help in (
    ("uniform", "prunekit.allocate.uniform:Uniform", "the same ratio in every group"),
    ("global", "prunekit.allocate.global_rank:GlobalRank", "one ranking of normalised scores over all groups"),
    ("scoped", "prunekit.allocate.scoped:Scoped", "a threshold per scope (name patterns, feature-map scale, structure)"),
    ("cost_rank", "prunekit.allocate.cost_rank:CostRank",
     "one ranking of normalised score per unit of the budget's cost (params, MACs, measured latency) saved"),
    ("pagcp", "prunekit.allocate.pagcp:Pagcp",
     "PAGCP: sequential sweep, each unit stopped where any task's held-out loss leaves its tolerance"),
):
    ALLOCATORS.lazy(_name, _target, _help)
