"""The recipe registry that AIA frame cubes and read_lightcurves share."""

from __future__ import annotations

from cloudlab.recipes import Recipes


def test_recipes_keep_the_latest_remembered():
    recipes: Recipes[str] = Recipes(3)
    recipes.remember(["a", "b"], "first")
    recipes.remember(["c"], "second")
    assert recipes.get("a") == "first" and recipes.get("c") == "second"
    recipes.remember(["a"], "third")  # remembered again: now the latest
    recipes.remember(["d"], "fourth")  # one too many: the least recent, "b", goes
    assert recipes.get("b") is None
    assert [recipes.get(k) for k in "acd"] == ["third", "second", "fourth"]
    assert recipes.get("never") is None
