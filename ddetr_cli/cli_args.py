"""Command-line argument types shared by several commands."""

from __future__ import annotations

from typing import Annotated

import typer

# Trailing `key=value` recipe overrides, as `train`, `evaluate`, `bench`, `recipe show` and
# `visualize dataset` take them.
Overrides = Annotated[
    list[str] | None,
    typer.Argument(
        help="Dotted key=value recipe overrides, parsed as YAML, e.g. train.epochs=12.",
        show_default=False,
    ),
]
