"""Options and arguments several commands share, declared once.

Value checks live in the functions the commands call (a ``UsageError`` in one line, exit 2),
not in typer's ``min=``/``max=``, whose messages are multi-line boxes.

Each is an ``Annotated`` type: a command writes ``weights: Weights`` (required) or
``weights: OptionalWeights = None``. Defaults stay at the command, since they differ.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

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
