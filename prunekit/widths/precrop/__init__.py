"""PreCropping (seed paper 8): layer densities at initialisation realised as channel counts.

    result = precrop(model, x, PreCropConfig(density="synflow", keep_params=0.5))
    small = prunekit.widths.build_model(result.config, model, x, seed=0)

Density sources are registered under the ``density`` kind (`densities.DENSITIES`); the unstructured baselines
(scored masks, random masks with the same densities) are in `masks`.
"""
from .channels import multipliers_from_densities, renormalise, uniform_multipliers  # noqa: F401
from .crop import PreCropConfig, PreCropResult, precrop  # noqa: F401
from .densities import DENSITIES, DensityRequest, DensityResult, global_topk_masks  # noqa: F401
from .layers import Layer, total, variable_groups, weighted_layers  # noqa: F401
from .masks import (apply_weight_masks, fold_weight_masks, masked_densities, nonzero_parameters,  # noqa: F401
                    random_masks)
from .synexp import synexp_densities  # noqa: F401
