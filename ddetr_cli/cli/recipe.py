"""``ddetr recipe list|show|copy``: the packaged recipes and resolved recipes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ddetr_cli.cli.console import group, print_line, stdout
from ddetr_cli.cli.options import Overrides, RecipeArgument

recipe_app = group("Recipes: list the packaged ones, show one resolved, copy one to edit.")


@recipe_app.command("list")
def recipe_list() -> None:
    """The packaged recipes: name, what it is, and the official COCO AP it reproduces.

    Use a name wherever a recipe is expected: `ddetr train refine`, `base: refine`.

    Example:
      ddetr recipe list
    """
    from ddetr_cli.recipe.library import describe, packaged_recipes

    table = Table(title="packaged recipes", title_justify="left")
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("what")
    table.add_column("COCO val AP", justify="right")
    for path in packaged_recipes().values():
        info = describe(path)
        ap = "-" if info.coco_ap is None else f"{info.coco_ap}"
        table.add_row(info.name, info.description, ap)
    stdout.print(table)


@recipe_app.command("show")
def recipe_show(recipe: RecipeArgument, overrides: Overrides = None) -> None:
    """Print a recipe fully resolved: bases merged, overrides applied, defaults filled.

    Overrides are dotted key=value pairs; values are parsed as YAML.

    Examples:
      ddetr recipe show two_stage
      ddetr recipe show recipes/refine.yaml train.epochs=12 data.root=/data/coco
    """
    from ddetr_cli.recipe import format_recipe, load_recipe

    typer.echo(format_recipe(load_recipe(recipe, overrides or ())), nl=False)


@recipe_app.command("copy")
def recipe_copy(
    name: Annotated[str, typer.Argument(help="A packaged recipe's name.", show_default=False)],
    destination: Annotated[
        Path, typer.Argument(help="File (or folder) to write.", show_default=False)
    ],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
) -> None:
    """Copy a packaged recipe to a file you can edit (its `base:` still names packaged recipes).

    Examples:
      ddetr recipe copy refine my_recipe.yaml
      ddetr train my_recipe.yaml data.root=/data/mine
    """
    from ddetr_cli.recipe.library import copy_recipe

    print_line(f"wrote {copy_recipe(name, destination, overwrite=force)}")
