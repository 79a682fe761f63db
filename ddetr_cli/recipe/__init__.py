"""Recipes: the schema (``schema``), reading files and overrides (``load``), checking
(``validate``), older schemas (``migrate``) and the recipes that ship with ddetr (``library``).

Nothing here imports torch: ``ddetr recipe show`` stays quick.
"""

from ddetr_cli.recipe.load import (
    absolute_data_paths,
    apply_overrides,
    dump_recipe,
    format_recipe,
    load_recipe,
    load_run_recipe,
)
from ddetr_cli.recipe.migrate import MIGRATIONS, migrate_recipe
from ddetr_cli.recipe.schema import DATA_PATH_KEYS, DEFAULTS, RECIPE_SCHEMA
from ddetr_cli.recipe.validate import validate_recipe

__all__ = [
    "DATA_PATH_KEYS",
    "DEFAULTS",
    "MIGRATIONS",
    "RECIPE_SCHEMA",
    "absolute_data_paths",
    "apply_overrides",
    "dump_recipe",
    "format_recipe",
    "load_recipe",
    "load_run_recipe",
    "migrate_recipe",
    "validate_recipe",
]
