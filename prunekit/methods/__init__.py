"""The seed papers' recipes: a typed config plus `run()`, composing the library's parts by name."""
from ..registry import registry

RECIPES = registry("recipe")
RECIPES.lazy("gcp", "prunekit.methods.gcp:GCPRecipe",
             "paper 1: dynamic sparse training, group channel pruning, spatial attention distillation")
RECIPES.lazy("pdp", "prunekit.methods.pdp:PDPRecipe",
             "paper 4: PDP soft masks (unstructured, N:M, channel); gmp and one-shot baselines on the same hooks")
RECIPES.lazy("udfc", "prunekit.methods.udfc:UDFCRecipe",
             "paper 12: data-free pruning + weight quantization, compensated in closed form (no data, no training)")
RECIPES.lazy("slim-cwd", "prunekit.methods.slim_cwd:SlimCWDRecipe",
             "paper 3: sparsity-aware training, BN-scale pruning (global/uniform), channel-wise distillation")
RECIPES.lazy("ftwt", "prunekit.methods.ftwt:FTWTRecipe",
             "paper 9: per-input channel masks from self-supervised predictors (dynamic pruning)")
RECIPES.lazy("pagcp", "prunekit.methods.pagcp:PagcpRecipe",
             "paper 2: rounds of multitask-oracle channel pruning (PAGCP sweep) and fine-tuning")
RECIPES.lazy("tas", "prunekit.methods.tas:TASRecipe",
             "paper 7: TAS differentiable width search (per-width BN, expected-MACs loss), derived net trained with KD")
RECIPES.lazy("precrop", "prunekit.methods.precrop:PreCropRecipe",
             "paper 8: PreCropping, layer densities at init (SNIP/GraSP/SynFlow/SynExp) as channel widths")
