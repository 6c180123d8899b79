"""Training-time sparsity regularizers (each a `TrainHook` acting in ``after_backward``) and their rate schedules."""
from ...registry import registry

REGULARIZERS = registry("regularizer")
for _name, _target, _help in (
    ("bn_l1", "prunekit.train.regularizers.bn_l1:BNL1",
     "L1 subgradient on BatchNorm scales (and optionally shifts) with a schedule (GCP, YOLOv8 papers)"),
    ("group_lasso", "prunekit.train.regularizers.group_lasso:GroupLasso",
     "group lasso over ChannelGroup channels: coupled channels are sparsified together"),
):
    REGULARIZERS.lazy(_name, _target, _help)

SCHEDULES = registry("rate_schedule")
for _name, _target, _help in (
    ("constant", "prunekit.train.regularizers.schedules:Constant", "constant rate s"),
    ("gcp_variable", "prunekit.train.regularizers.schedules:GCPVariable",
     "GCP: s, then 0.01*s for channels above the 65th |gamma| percentile after 40% of training"),
    ("linear_decay", "prunekit.train.regularizers.schedules:LinearDecay", "YOLOv8 paper: s0 * (1 - 0.9 * e / E)"),
    ("cosine_decay", "prunekit.train.regularizers.schedules:CosineDecay", "half-cosine from s to final"),
):
    SCHEDULES.lazy(_name, _target, _help)
