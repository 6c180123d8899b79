"""The seed papers' recipes: a typed config plus `run()`, composing the library's parts by name."""
from ..registry import registry

RECIPES = registry("recipe")
