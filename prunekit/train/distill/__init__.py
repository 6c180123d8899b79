"""Distillation for recovery after pruning: feature taps, adapters, losses by name, and the `Distiller` hook.

`prunekit.train.distill.taps` holds `FeatureTaps` (forward hooks by module-name pattern, always removed),
the width adapters and `Distiller` (a `TrainHook` adding the weighted distillation losses to the task loss).
"""
from ...registry import registry

DISTILL_LOSSES = registry("distill_loss")
for _name, _target, _help in (
    ("logit_kd", "prunekit.train.distill.logit_kd:LogitKD",
     "Hinton KD: T^2 * KL(softmax(t/T) || softmax(s/T)), optionally (1-alpha)*CE + alpha*KD"),
    ("attention", "prunekit.train.distill.attention:AttentionTransfer",
     "spatial attention transfer (GCP paper): mean-square between L2-normalised mean_c(F^2) maps"),
    ("cwd", "prunekit.train.distill.cwd:ChannelWiseDistillation",
     "channel-wise distillation (Shu et al. 2021; YOLOv8 paper): KL of per-channel spatial softmax"),
):
    DISTILL_LOSSES.lazy(_name, _target, _help)
