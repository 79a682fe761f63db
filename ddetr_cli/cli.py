"""The ``ddetr`` command line. Thin by design: parse the arguments, call one function, print.

Heavy modules (torch, the model) are imported inside the commands so ``ddetr --help`` is instant.
Errors: a ``DdetrError`` (or an OSError about a user's path) raised by any command becomes one red
``error: ...`` line and exit status 1; ``ddetr --debug ...`` shows the traceback instead.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from ddetr_cli import __version__
from ddetr_cli.cli_args import Overrides
from ddetr_cli.errors import DdetrError

stdout = Console()
stderr = Console(stderr=True)

EXIT_FAILED = 1  # a DdetrError, or some inputs failed
EXIT_USAGE = 2  # bad arguments (as click/typer use)
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


def print_error(message: str) -> None:
    """One red line on stderr, never wrapped (tests and scripts grep it)."""
    stderr.print(Text(f"error: {message}", style="red"), soft_wrap=True, highlight=False)


def usage_error(message: str) -> typer.Exit:
    """Report a bad argument in one line; ``raise usage_error(...)`` exits with status 2."""
    print_error(message)
    return typer.Exit(EXIT_USAGE)


def _describe_os_error(exc: OSError) -> str:
    if exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


class _Group(TyperGroup):
    """Turns user errors raised by any (sub)command into one line and an exit status."""

    def invoke(self, ctx: click.Context) -> Any:
        debug = bool(ctx.params.get("debug"))
        try:
            return super().invoke(ctx)
        except DdetrError as exc:
            if debug:
                raise
            print_error(str(exc))
            ctx.exit(EXIT_FAILED)
        except OSError as exc:  # e.g. an unwritable --out folder
            if debug:
                raise
            print_error(_describe_os_error(exc))
            ctx.exit(EXIT_FAILED)
        except KeyboardInterrupt:
            if debug:
                raise
            print_error("interrupted")
            ctx.exit(EXIT_INTERRUPTED)


app = typer.Typer(
    name="ddetr",
    cls=_Group,
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
    """Deformable DETR from the command line: train, evaluate, predict, benchmark.

    Recipes (YAML) describe models; any value can be overridden with key=value.

    Examples:
      ddetr predict photo.jpg photos/ --weights checkpoint.pth
      ddetr recipe show recipes/refine.yaml train.epochs=12
    """
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=stderr, show_time=False, show_path=debug)],
        force=True,
    )


# ---------------------------------------------------------------------------------------------
# Commands. Add new ones below (`@app.command()`), and command groups with
# `app.add_typer(group, name=...)` as `recipe` does. Keep each body to: check arguments, call one
# function from the package, print its result.
# ---------------------------------------------------------------------------------------------


@app.command()
def predict(
    images: Annotated[
        list[Path],
        typer.Argument(help="Pictures and/or folders of pictures.", show_default=False),
    ],
    weights: Annotated[
        Path,
        typer.Option(
            "--weights", "-w", help="Checkpoint: a ddetr or official .pth.", show_default=False
        ),
    ],
    recipe: Annotated[
        Path | None,
        typer.Option(
            "--recipe",
            "-r",
            help="Recipe YAML to build the model from (default: the checkpoint's own recipe).",
        ),
    ] = None,
    threshold: Annotated[
        float, typer.Option("--threshold", "-t", help="Keep detections scoring at least this.")
    ] = 0.5,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for predictions.json and drawn pictures.")
    ] = Path("predictions"),
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Pictures per batch.")] = 1,
    min_size: Annotated[
        int | None,
        typer.Option(help="Resize the short side to this (default: recipe data.eval_min_size)."),
    ] = None,
    max_size: Annotated[
        int | None,
        typer.Option(help="Cap the long side at this (default: recipe data.eval_max_size)."),
    ] = None,
    attention_backend: Annotated[
        str | None,
        typer.Option(
            help="Deformable attention backend: auto, kernel or reference "
            "(default: the recipe's model.attention_backend).",
        ),
    ] = None,
) -> None:
    """Detect objects in pictures; write COCO-results JSON and pictures with boxes drawn.

    Boxes are x, y, width, height in the original picture's pixels.
    Unreadable pictures are reported and skipped (exit status 1).

    Examples:
      ddetr predict photo.jpg --weights checkpoint.pth
      ddetr predict photos/ more/ -w r50_deformable_detr.pth -t 0.3 -o out/
      ddetr predict photos/ -w checkpoint.pth --device cuda --batch-size 4
    """
    from ddetr_cli.predict import check_options, run_predict

    try:
        check_options(threshold, batch_size, min_size, max_size)
    except DdetrError as exc:
        raise usage_error(str(exc)) from None

    overrides = [f"model.attention_backend={attention_backend}"] if attention_backend else []
    summary = run_predict(
        images,
        weights,
        recipe_path=recipe,
        overrides=overrides,
        threshold=threshold,
        out_dir=out,
        device=device,
        batch_size=batch_size,
        min_size=min_size,
        max_size=max_size,
        progress=True,
    )

    table = Table(title="ddetr predict", show_header=False, title_justify="left")
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")  # paths in full, never truncated
    table.add_row("pictures", str(summary.n_images))
    table.add_row("failed", str(summary.n_failed), style="red" if summary.n_failed else None)
    table.add_row("detections", f"{summary.n_detections} (score >= {threshold:g})")
    table.add_row("seconds per picture", f"{summary.seconds_per_image:.3f} on {device}")
    table.add_row("predictions", str(summary.predictions_path))
    table.add_row("drawn pictures", f"{summary.out_dir}/")
    stdout.print(table)
    for _path, reason in summary.failures:
        stderr.print(Text(f"failed: {reason}", style="red"), soft_wrap=True, highlight=False)
    if summary.n_failed:
        raise typer.Exit(EXIT_FAILED)


recipe_app = typer.Typer(
    help="Inspect recipes (YAML model and training configurations).",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
app.add_typer(recipe_app, name="recipe")


@recipe_app.command("show")
def recipe_show(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.", show_default=False)],
    overrides: Overrides = None,
) -> None:
    """Print a recipe fully resolved: bases merged, overrides applied, defaults filled.

    Overrides are dotted key=value pairs; values are parsed as YAML.

    Examples:
      ddetr recipe show recipes/two_stage.yaml
      ddetr recipe show recipes/refine.yaml train.epochs=12 data.root=/data/coco
    """
    from ddetr_cli.config import format_recipe, load_recipe

    typer.echo(format_recipe(load_recipe(recipe, overrides or ())), nl=False)


# `ddetr bench [model options]` and `ddetr bench op`; bodies in commands_bench.py.
from ddetr_cli.commands_bench import bench as _bench  # noqa: E402
from ddetr_cli.commands_bench import bench_op as _bench_op  # noqa: E402


class _BenchGroup(TyperGroup):
    """`ddetr bench ...` runs the model benchmark unless the first word names a sub-command,
    so `ddetr bench --fps model.two_stage=true` and `ddetr bench op` both work."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or args[0] not in self.commands:
            args = ["model", *args]
        return super().parse_args(ctx, args)


bench_app = typer.Typer(
    cls=_BenchGroup,
    help="Benchmarks: the model (`ddetr bench [model] ...`) and the attention op (`bench op`).",
    rich_markup_mode="rich",
)
bench_app.command("model")(_bench)
bench_app.command("op")(_bench_op)
app.add_typer(bench_app, name="bench")


# Training and data commands live in their own module (bodies in commands_train.py).
from ddetr_cli.commands_train import data_app, train  # noqa: E402

app.command("train")(train)
app.add_typer(data_app, name="data")


# `ddetr evaluate`: COCO AP of a checkpoint or a results file (body in commands_evaluate.py).
from ddetr_cli.commands_evaluate import evaluate as _evaluate  # noqa: E402

app.command("evaluate")(_evaluate)


# `ddetr visualize ...`: pictures that explain the model (bodies in commands_visualize.py).
from ddetr_cli.commands_visualize import visualize_app  # noqa: E402

app.add_typer(visualize_app, name="visualize")


# `ddetr ops build|info`: the attention kernels (bodies in commands_ops.py).
from ddetr_cli.commands_ops import ops_app  # noqa: E402

app.add_typer(ops_app, name="ops")


def main() -> None:
    """Console-script entry point (``ddetr``)."""
    try:
        app(prog_name="ddetr")
    except KeyboardInterrupt:  # before or after a command ran, e.g. while importing torch
        print_error("interrupted")
        raise SystemExit(EXIT_INTERRUPTED) from None
