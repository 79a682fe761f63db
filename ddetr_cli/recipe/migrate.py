"""Recipes stored under an older schema (in checkpoints), brought to the current one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ddetr_cli.errors import DdetrError
from ddetr_cli.recipe.schema import RECIPE_SCHEMA

# schema N -> a function that turns a schema-N recipe (a nested dict) into a schema N+1 one.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def migrate_recipe(recipe: dict[str, Any], schema: int) -> dict[str, Any]:
    """A recipe stored under an older schema, brought to the current one."""
    if schema > RECIPE_SCHEMA:
        raise DdetrError(
            f"the recipe was written by a newer ddetr (recipe schema {schema}, this version "
            f"reads up to {RECIPE_SCHEMA}): upgrade ddetr-cli"
        )
    for version in range(schema, RECIPE_SCHEMA):
        recipe = MIGRATIONS[version](recipe)
    return recipe
