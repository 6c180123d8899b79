"""The seed papers' recipes: a typed config plus `run()`, composing the library's parts by name."""
from ..registry import registry

RECIPES = registry("recipe")
RECIPES.lazy("gcp", "prunekit.methods.gcp:GCPRecipe",
             "paper 1: dynamic sparse training, group channel pruning, spatial attention distillation")
RECIPES.lazy("slim-cwd", "prunekit.methods.slim_cwd:SlimCWDRecipe",
             "paper 3: sparsity-aware training, BN-scale pruning (global/uniform), channel-wise distillation")
