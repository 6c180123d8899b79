"""Every registered recipe meets the recipe contract, without training (the end-to-end runs are in test_recipes)."""
from __future__ import annotations

import dataclasses

import pytest

from prunekit.config import from_dict, to_dict
from prunekit.errors import ConfigError
from prunekit.methods import RECIPES
from prunekit.methods.base import Recipe, RecipeConfig


@pytest.mark.parametrize("name", RECIPES.names())
def test_recipe_conforms(name):
    cls = RECIPES.get(name)
    assert issubclass(cls, Recipe) and cls.name == name
    assert (cls.__doc__ or "").strip() and isinstance(cls.fidelity, str) and cls.fidelity
    assert issubclass(cls.Config, RecipeConfig) and dataclasses.is_dataclass(cls.Config)
    config = cls.Config()
    again = from_dict(cls.Config, {k: v for k, v in to_dict(config).items()})
    assert to_dict(again) == to_dict(config)  # the config round-trips through its nested mapping
    recipe = cls(config)
    stages = recipe.stages()
    assert stages and len({s.name for s in stages}) == len(stages)
    for stage in stages:
        assert stage.sections and all(dataclasses.is_dataclass(getattr(config, s)) for s in stage.sections)
        assert callable(stage.run)
    # fingerprints are stable and every stage's differs from the one before
    prints = [recipe.fingerprint(i) for i in range(len(stages))]
    assert prints == [cls(config).fingerprint(i) for i in range(len(stages))] and len(set(prints)) == len(prints)
    # a section given a value, an unknown key and a wrong type are refused by name, before anything runs
    section = stages[0].sections[0]
    with pytest.raises(ConfigError, match=rf"'{section}' is a section"):
        cls.from_file(None, [f"{section}=3"])
    with pytest.raises(ConfigError, match=rf"{section}\.no_such_key"):
        cls.from_file(None, [f"{section}.no_such_key=1"])
    with pytest.raises(ConfigError, match=r"'seed': expected int"):
        cls.from_file(None, ["seed=abc"])
