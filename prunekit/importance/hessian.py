"""Second-order OBD criterion with the diagonal empirical Fisher as the Hessian.

Optimal Brain Damage (LeCun et al., NeurIPS 1989): removing w costs about 0.5 * H_ww * w^2; the diagonal Hessian is
approximated by the empirical Fisher E[g^2] (per-sample or per-batch squared gradients, accumulated by the collector
with `requires = {"fisher"}`). A channel's score sums the saliency of every weight it removes, as in DepGraph's
group Hessian importance.
"""
from __future__ import annotations

import torch

from .taylor import Taylor


class Hessian(Taylor):
    """sum_{w in slice(i)} 0.5 * w^2 * E[g^2] per group channel i, reduced over members."""

    requires = frozenset({"fisher"})
    field = "fisher"

    @staticmethod
    def channel_saliency(weight: torch.Tensor, fisher: torch.Tensor) -> torch.Tensor:
        return 0.5 * (weight.pow(2) * fisher).sum(1)
