"""Importance criteria, one file each, by name. A criterion scores whole channel groups (higher = keep)."""
from ..registry import registry

CRITERIA = registry("criterion")
for _name, _target, _help in (
    ("l1", "prunekit.importance.magnitude:L1", "L1 magnitude aggregated over every group member"),
    ("l2", "prunekit.importance.magnitude:L2", "L2 magnitude aggregated over every group member"),
    ("bn_scale", "prunekit.importance.bn_scale:BNScale", "|gamma| of the BatchNorm layers in the group"),
    ("taylor", "prunekit.importance.taylor:Taylor", "first-order Taylor |w * dL/dw|"),
    ("hessian", "prunekit.importance.hessian:Hessian", "second-order OBD with the diagonal Fisher"),
    ("fpgm", "prunekit.importance.fpgm:FPGM", "distance to the geometric median of the filters"),
    ("activation", "prunekit.importance.activation:Activation", "mean |activation| of the group's channels"),
    ("random", "prunekit.importance.random:Random", "random scores (baseline)"),
    ("sensitivity", "prunekit.importance.sensitivity:Sensitivity",
     "measured per-group loss (or accuracy) curves from `prunekit analyze --sensitivity`, comparable across groups"),
):
    CRITERIA.lazy(_name, _target, _help)
