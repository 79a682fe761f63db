"""``ddetr predict``: detections for pictures and folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from ddetr_cli.cli.console import EXIT_FAILED, print_line, stderr, stdout
from ddetr_cli.cli.options import (
    AttentionBackend,
    BatchSize,
    Device,
    MaxSize,
    MinSize,
    Out,
    PicturesAndOverrides,
    Recipe,
    Threshold,
    Weights,
    describe_slicing,
    split_overrides,
    with_backend,
    with_slicing,
)


@with_slicing
def predict(
    images: PicturesAndOverrides,
    weights: Weights,
    recipe: Recipe = None,
    threshold: Threshold = 0.5,
    out: Out = Path("predictions"),
    device: Device = "cpu",
    batch_size: BatchSize = 1,
    min_size: MinSize = None,
    max_size: MaxSize = None,
    attention_backend: AttentionBackend = None,
    slicing: Any = None,  # SliceOptions | None, from --slice and its companions (with_slicing)
) -> None:
    """Detect objects in pictures; write COCO-results JSON and pictures with boxes drawn.

    Boxes are x, y, width, height in the original picture's pixels; each detection also carries
    the picture's file_name, so `ddetr evaluate --predictions` can match it to annotations.
    Unreadable pictures are reported and skipped (exit status 1). With --slice, each picture
    is cut into overlapping tiles seen at their own resolution and their boxes merged.

    Examples:
      ddetr predict photo.jpg --weights checkpoint.pth
      ddetr predict photos/ more/ -w r50_deformable_detr.pth -t 0.3 -o out/
      ddetr predict photos/ -w runs/shapes model.num_detections=20
      ddetr predict photos/ -w checkpoint.pth --device cuda --batch-size 4
      ddetr predict aerial/ -w runs/shapes_small --slice 128 128 --overlap 0.25 -b 16
    """
    from ddetr_cli.inference.predict import run_predict

    pictures, overrides = split_overrides(images)
    overrides = with_backend(overrides, attention_backend)
    summary = run_predict(
        pictures,
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
        slicing=slicing,
    )

    table = Table(title="ddetr predict", show_header=False, title_justify="left")
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")  # paths in full, never truncated
    table.add_row("pictures", str(summary.n_images))
    table.add_row("failed", str(summary.n_failed), style="red" if summary.n_failed else None)
    table.add_row("detections", f"{summary.n_detections} (score >= {threshold:g})")
    table.add_row("seconds per picture", f"{summary.seconds_per_image:.3f} on {device}")
    if summary.slicing is not None:
        table.add_row("tiles per picture", describe_slicing(summary.slicing))
    table.add_row("predictions", str(summary.predictions_path))
    table.add_row("drawn pictures", f"{summary.out_dir}/")
    stdout.print(table)
    for _path, reason in summary.failures:
        print_line(f"failed: {reason}", stderr, style="red")
    if summary.n_failed:
        raise typer.Exit(EXIT_FAILED)
