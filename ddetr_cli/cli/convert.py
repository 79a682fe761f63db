"""``ddetr convert``: weights between ddetr, transformers and the official formats."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ddetr_cli.cli.console import print_line
from ddetr_cli.cli.options import Overrides, Recipe


def convert(
    src: Annotated[
        str,  # a string, as options.Weights
        typer.Argument(
            help="Weights to read: a ddetr checkpoint, an official .pth, a run folder, a "
            ".safetensors file, a transformers folder or a Hub id (owner/name).",
            show_default=False,
        ),
    ],
    dst: Annotated[
        Path,
        typer.Argument(
            help="Where to write: a file (ddetr, official; .safetensors for ddetr tensors "
            "without pickle) or a folder (hf).",
            show_default=False,
        ),
    ],
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help="ddetr (checkpoint with its recipe, or .safetensors), hf (transformers folder: "
            "config.json + model.safetensors; models with a resnet50 or resnet101 backbone "
            "only, not the shapes demo's convnet) or official (what the official code's "
            "--resume reads).",
        ),
    ] = "ddetr",
    recipe: Recipe = None,
    overrides: Overrides = None,
) -> None:
    """Convert weights between ddetr, Hugging Face transformers and the official code.

    The tensors are loaded strictly into the model their recipe describes before anything is
    written, so every file written runs. --to hf takes models with a resnet50 or resnet101
    backbone (what transformers' Deformable DETR runs; the shapes demo's convnet cannot be
    converted); the folder loads with DeformableDetrForObjectDetection.from_pretrained
    (transformers 4.x and 5.x, offline) with transformers' own ResNet, without timm (DC5
    models excepted: transformers builds them from timm).

    Examples:
      ddetr convert r50_deformable_detr.pth detr-hf --to hf
      ddetr convert SenseTime/deformable-detr deformable-detr.pth --to ddetr
      ddetr convert path/to/hf-folder model.safetensors
      ddetr convert runs/coco/checkpoint_best.pth for-official.pth --to official
      ddetr convert dc5_without_args.pth dc5.pth --recipe single_scale_dc5
    """
    from ddetr_cli.weights.convert import convert as run_convert

    summary = run_convert(src, dst, to, recipe, overrides or [])
    print_line(
        f"{summary['src']} ({summary['src_format']}, {summary['tensors_read']} tensors) -> "
        f"{summary['dst']} ({summary['to']}, {summary['tensors_written']} tensors): "
        f"{summary['model']}"
    )
    for note in summary["notes"]:
        print_line(f"note: {note}")
