"""Options and arguments several commands share, declared once.

Value checks live in the functions the commands call (a ``UsageError`` in one line, exit 2),
not in typer's ``min=``/``max=``, whose messages are multi-line boxes.

Each is an ``Annotated`` type: a command writes ``weights: Weights`` (required) or
``weights: OptionalWeights = None``. Defaults stay at the command, since they differ.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ddetr_cli.errors import UsageError

if TYPE_CHECKING:
    from ddetr_cli.inference.slicing import SliceOptions

_WEIGHTS_HELP = (
    "Weights: a ddetr checkpoint, an official .pth, a run folder (its best checkpoint), a "
    "transformers folder or Hub id, a .safetensors or an exported .onnx file."
)

# Pictures and folders, with any `key=value` overrides among them (predict, visualize
# predictions): typer cannot take two variable-length arguments.
PicturesAndOverrides = Annotated[
    list[str],
    typer.Argument(
        help="Pictures and/or folders of pictures, and any key=value recipe overrides.",
        show_default=False,
    ),
]

# The same for predict, which also takes videos.
InputsAndOverrides = Annotated[
    list[str],
    typer.Argument(
        help="Pictures, videos and/or folders of them, and any key=value recipe overrides.",
        show_default=False,
    ),
]

# Trailing `key=value` recipe overrides.
Overrides = Annotated[
    list[str] | None,
    typer.Argument(
        help="Dotted key=value recipe overrides, parsed as YAML, e.g. train.epochs=12.",
        show_default=False,
    ),
]

# Weights stay strings: a Path would turn `./owner/name` (local) into `owner/name` (a Hub id).
Weights = Annotated[str, typer.Option("--weights", "-w", help=_WEIGHTS_HELP, show_default=False)]
OptionalWeights = Annotated[
    str | None, typer.Option("--weights", "-w", help=_WEIGHTS_HELP, show_default=False)
]

Recipe = Annotated[
    Path | None,
    typer.Option(
        "--recipe",
        "-r",
        help="Recipe: a YAML file or a packaged recipe's name (default: the weights' own).",
        show_default=False,
    ),
]

RecipeArgument = Annotated[
    Path,
    typer.Argument(
        help="Recipe: a YAML file or a packaged recipe's name (ddetr recipe list).",
        show_default=False,
    ),
]

Device = Annotated[str, typer.Option("--device", help="cpu, cuda or cuda:N.")]

Out = Annotated[Path, typer.Option("--out", "-o", help="Output folder.")]

JsonOut = Annotated[
    Path | None,
    typer.Option("--json", help="Also write the results as JSON to this file.", show_default=False),
]

BatchSize = Annotated[int, typer.Option("--batch-size", "-b", help="Pictures per batch.")]

Threshold = Annotated[
    float,
    typer.Option("--threshold", "-t", help="Keep detections scoring at least this (0 to 1)."),
]

AttentionBackend = Annotated[
    str | None,
    typer.Option(
        "--attention-backend",
        help="Deformable attention backend: auto, kernel or reference "
        "(default: the recipe's model.attention_backend).",
        show_default=False,
    ),
]

MinSize = Annotated[
    int | None,
    typer.Option("--min-size", help="Resize the short side to this (default: the recipe's)."),
]
MaxSize = Annotated[
    int | None,
    typer.Option("--max-size", help="Cap the long side at this (default: the recipe's)."),
]


def with_backend(overrides: list[str] | None, attention_backend: str | None) -> list[str]:
    """The overrides plus `--attention-backend`, which is a shorthand for one of them."""
    extra = [f"model.attention_backend={attention_backend}"] if attention_backend else []
    return [*(overrides or []), *extra]


# `model.num_queries=100`: a recipe override among the pictures.
_OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.\w+)+=")


def split_overrides(items: list[str]) -> tuple[list[Path], list[str]]:
    """Pictures and folders, and the `key=value` overrides mixed with them."""
    pictures, overrides = [], []
    for item in items:
        is_override = _OVERRIDE.match(item) and not Path(item).exists()
        (overrides if is_override else pictures).append(item)
    return [Path(p) for p in pictures], overrides


# Sliced inference (predict, evaluate, visualize predictions, bench): None = not given, so the
# defaults live in one place (inference.slicing.SliceOptions) and are stated in the help.
SliceTile = Annotated[
    tuple[int, int] | None,
    typer.Option(
        "--slice",
        metavar="H W",
        help="Cut each picture into overlapping H x W tiles, run them at their own resolution "
        "(--batch-size tiles at a time) and merge the boxes: small objects on large pictures.",
        show_default=False,
    ),
]
Overlap = Annotated[
    float | None,
    typer.Option(
        help="With --slice: share of a tile's side that neighbouring tiles overlap, 0 to below 1 "
        "(default: 0.2).",
        show_default=False,
    ),
]
Full = Annotated[
    bool | None,
    typer.Option(
        "--full/--no-full",
        help="With --slice: also run the whole picture at the evaluation resize, for objects "
        "larger than a tile (default: no-full).",
        show_default=False,
    ),
]
Merge = Annotated[
    str | None,
    typer.Option(
        help="With --slice: nmm (pieces of an object cut by tile edges become one box) or nms "
        "(the best-scoring box stays); default: nmm.",
        show_default=False,
    ),
]
Match = Annotated[
    str | None,
    typer.Option(
        help="With --slice: how boxes of a class are matched for merging, ios (intersection "
        "over the smaller box) or iou; default: ios.",
        show_default=False,
    ),
]
MatchThreshold = Annotated[
    float | None,
    typer.Option(
        help="With --slice: boxes overlapping by more than this are one object (default: 0.5).",
        show_default=False,
    ),
]
MaxDetections = Annotated[
    int | None,
    typer.Option(
        help="With --slice: detections kept per picture after merging (default: 500).",
        show_default=False,
    ),
]


def slice_options(
    slice_tile: tuple[int, int] | None,
    overlap: float | None = None,
    full: bool | None = None,
    merge: str | None = None,
    match: str | None = None,
    match_threshold: float | None = None,
    max_detections: int | None = None,
) -> SliceOptions | None:
    """The checked ``SliceOptions`` of --slice and its companions (None without --slice; a
    companion given without it is a UsageError)."""
    given = {
        "overlap": overlap,
        "full": full,
        "merge": merge,
        "match": match,
        "match_threshold": match_threshold,
        "max_detections": max_detections,
    }
    given = {key: value for key, value in given.items() if value is not None}
    if slice_tile is None:
        if given:
            option = "--" + next(iter(given)).replace("_", "-")
            raise UsageError(f"{option} goes with --slice H W")
        return None
    from ddetr_cli.inference.slicing import SliceOptions

    return SliceOptions(slice_tile, **given)


_SLICE_PARAMETERS = [
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)
    for name, annotation in (
        ("slice_tile", SliceTile),
        ("overlap", Overlap),
        ("full", Full),
        ("merge", Merge),
        ("match", Match),
        ("match_threshold", MatchThreshold),
        ("max_detections", MaxDetections),
    )
]


def with_slicing(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command --slice and its companions (the options above, after its own): the
    command takes them as one ``slicing`` argument, ``slice_options``'s result."""
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "slicing"]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        values = {p.name: kwargs.pop(p.name, None) for p in _SLICE_PARAMETERS}
        return command(*args, slicing=slice_options(**values), **kwargs)

    # What typer reads: the command's own parameters, then these (annotations evaluated).
    wrapper.__signature__ = signature.replace(parameters=[*own, *_SLICE_PARAMETERS])
    wrapper.__annotations__ = {p.name: p.annotation for p in [*own, *_SLICE_PARAMETERS]}
    return wrapper


def describe_slicing(summary: dict) -> str:
    """One line of a ``SlicedDetector.summary()``: tiles per picture and how they were made."""
    h, w = summary["tile"]
    full = ", + the whole picture" if summary["full"] else ""
    return (
        f"{summary['tiles_per_picture']:g} ({h}x{w}, overlap {summary['overlap']:g}{full}; "
        f"{summary['merge']} at {summary['match']} > {summary['match_threshold']:g}; at most "
        f"{summary['max_detections']} per picture)"
    )
