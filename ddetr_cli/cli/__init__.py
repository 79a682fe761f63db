"""The ``ddetr`` command line: builds the app and registers the commands, nothing else.

One module per command group (``predict``, ``train``, ``data``, ``evaluate``, ``bench``,
``visualize``, ``recipe``, ``ops``, ``convert``, ``export``); options several commands share are in
``options``, consoles and error reporting in ``console``. Commands are thin: parse, call one
function of the package, print. Heavy modules (torch, the model) are imported inside the
commands, so ``ddetr --help`` is instant. No module of the package imports this one.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from rich.logging import RichHandler

from ddetr_cli import __version__
from ddetr_cli.cli import (
    bench,
    convert,
    data,
    evaluate,
    export,
    ops,
    predict,
    recipe,
    train,
)
from ddetr_cli.cli import visualize as visualize_commands
from ddetr_cli.cli.console import (
    EXIT_INTERRUPTED,
    App,
    ErrorReportingGroup,
    print_error,
    stderr,
)

app = App(
    name="ddetr",
    cls=ErrorReportingGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # --debug shows plain tracebacks; otherwise one line
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"ddetr {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show full tracebacks and debug logging.")
    ] = False,
) -> None:
    """Deformable DETR from the command line: train, evaluate, predict, benchmark, export.

    Recipes (YAML) describe models; packaged ones go by name (ddetr recipe list); any value can
    be overridden with key=value.

    Examples:
      ddetr train shapes
      ddetr predict photo.jpg photos/ --weights checkpoint.pth
      ddetr recipe show refine train.epochs=12
    """
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=stderr, show_time=False, show_path=debug)],
        force=True,
    )


app.command("train")(train.train)
app.command("predict")(predict.predict)
app.command("evaluate")(evaluate.evaluate)
app.add_typer(bench.bench_app, name="bench")
app.add_typer(visualize_commands.visualize_app, name="visualize")
app.add_typer(data.data_app, name="data")
app.command("convert")(convert.convert)
app.command("export")(export.export)
app.add_typer(recipe.recipe_app, name="recipe")
app.add_typer(ops.ops_app, name="ops")


def main() -> None:
    """Console-script entry point (``ddetr``)."""
    try:
        app(prog_name="ddetr")
    except KeyboardInterrupt:  # before or after a command ran, e.g. while importing torch
        print_error("interrupted")
        raise SystemExit(EXIT_INTERRUPTED) from None
