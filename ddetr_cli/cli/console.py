"""Where the command line writes, and how it reports errors.

A ``DdetrError`` (or an OSError about a user's path) raised by any command becomes one red
``error: ...`` line and exit status 1; a ``UsageError`` exits 2, like typer's own argument errors;
Ctrl-C exits 130, a training stopped by SIGTERM 143. ``ddetr --debug ...`` shows the traceback
instead.
"""

from __future__ import annotations

import inspect
from typing import Any

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from ddetr_cli.errors import DdetrError, Terminated, UsageError

stdout = Console()
stderr = Console(stderr=True)

EXIT_FAILED = 1  # a DdetrError, or some inputs failed
EXIT_USAGE = 2  # bad arguments (as typer uses)
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT
EXIT_TERMINATED = 143  # SIGTERM (training saves first), as shells report it


def print_error(message: str) -> None:
    """One red line on stderr, never wrapped (tests and scripts grep it)."""
    stderr.print(Text(f"error: {message}", style="red"), soft_wrap=True, highlight=False)


def print_line(message: str, console: Console = stdout, style: str | None = None) -> None:
    """One line as it is: no rich markup, no highlighting, paths never wrapped."""
    console.print(Text(message, style=style or ""), soft_wrap=True, highlight=False)


def _describe_os_error(exc: OSError) -> str:
    if exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


def _exit_status(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, UsageError):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, DdetrError):
        return EXIT_FAILED, str(exc)
    if isinstance(exc, OSError):
        return EXIT_FAILED, _describe_os_error(exc)
    if isinstance(exc, Terminated):
        return EXIT_TERMINATED, "terminated (SIGTERM)"
    return EXIT_INTERRUPTED, "interrupted"


class _PlainFlags:
    """Help shows flags as flags: typer's rich help would print `<bool>` beside every flag as
    if it took a value (`--force <bool>`)."""

    def get_params(self, ctx: typer.Context) -> list[Any]:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


class Command(_PlainFlags, TyperCommand):
    """Every ddetr command (registered with ``cls=Command`` by its group)."""


class ErrorReportingGroup(_PlainFlags, TyperGroup):
    """Turns user errors raised by any (sub)command into one line and an exit status."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (DdetrError, OSError, KeyboardInterrupt) as exc:
            if ctx.find_root().params.get("debug"):
                raise
            if isinstance(exc, BrokenPipeError):  # `ddetr ... | head`: the reader left
                raise SystemExit(EXIT_FAILED) from None
            status, message = _exit_status(exc)
            print_error(message)
            ctx.exit(status)


def reflow(doc: str | None) -> str | None:
    """A docstring as help text: the lines of a prose paragraph joined (typer's rich help keeps
    every source line break, so wrapped docstrings came out ragged); paragraphs with indented
    lines, such as the examples, kept line by line."""
    if not doc:
        return doc
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(
        p if any(line.startswith(" ") for line in p.splitlines()) else " ".join(p.split("\n"))
        for p in paragraphs
    )


class App(typer.Typer):
    """A typer app whose commands are ``Command``s (flags shown as flags) and whose help text
    is reflowed."""

    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", Command)

        def register(function: Any) -> Any:
            help_text = kwargs.pop("help", None) or reflow(function.__doc__)
            return super(App, self).command(*args, help=help_text, **kwargs)(function)

        return register

    def callback(self, *args: Any, **kwargs: Any) -> Any:
        def register(function: Any) -> Any:
            help_text = kwargs.pop("help", None) or reflow(function.__doc__)
            return super(App, self).callback(*args, help=help_text, **kwargs)(function)

        return register


def group(help_text: str, cls: type[TyperGroup] = ErrorReportingGroup) -> App:
    """A command group (``ddetr recipe ...``) with the app's help and error conventions."""
    return App(
        cls=cls,
        help=help_text,
        no_args_is_help=True,
        rich_markup_mode="rich",
        context_settings={"help_option_names": ["-h", "--help"]},
    )
