"""``ddetr visualize ...``: pictures that explain the model, its data and its training."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from ddetr_cli.cli.console import EXIT_FAILED, group, print_line, stderr
from ddetr_cli.cli.options import (
    BatchSize,
    Device,
    MaxSize,
    MinSize,
    Out,
    Overrides,
    PicturesAndOverrides,
    Recipe,
    RecipeArgument,
    Threshold,
    Weights,
    describe_slicing,
    split_overrides,
    with_slicing,
)
from ddetr_cli.errors import UsageError

visualize_app = group(
    "Pictures that explain a model: predictions, where deformable attention samples, the "
    "training data as the model sees it, and training curves. -o is always a folder."
)


@visualize_app.command("attention")
def visualize_attention(
    image: Annotated[Path, typer.Argument(help="The picture.", show_default=False)],
    weights: Weights,
    overrides: Overrides = None,
    recipe: Recipe = None,
    top: Annotated[int, typer.Option(help="How many top-scoring detections to draw.")] = 5,
    decoder_layer: Annotated[
        int,
        typer.Option(
            help="Decoder layer whose cross-attention is drawn, numbered from 1 (-1: the last)."
        ),
    ] = -1,
    pixel: Annotated[
        tuple[int, int] | None,
        typer.Option(
            metavar="X Y", help="Also draw what the encoder samples for this picture pixel."
        ),
    ] = None,
    encoder_layer: Annotated[
        int, typer.Option(help="Encoder layer for --pixel, numbered from 1 (-1: the last).")
    ] = -1,
    out: Out = Path("visualize"),
    device: Device = "cpu",
) -> None:
    """Deformable attention's sampling points for the top detections, on every feature level
    (colour = level, size and opacity = attention weight), with each query's reference point
    (white cross) and predicted box; optionally the encoder's points for one pixel.

    Examples:
      ddetr visualize attention photo.jpg -w checkpoint.pth
      ddetr visualize attention photo.jpg -w checkpoint.pth --top 3 --decoder-layer 1
      ddetr visualize attention photo.jpg -w checkpoint.pth --pixel 320 240
    """
    from ddetr_cli.data.pictures import load_image
    from ddetr_cli.viz.attention import attention_pictures
    from ddetr_cli.weights import resolve_model

    if top < 1:
        raise UsageError(f"--top must be at least 1, got {top}")
    picture = load_image(image)
    model, resolved = resolve_model(weights, recipe, overrides or [], device)
    result = attention_pictures(
        model,
        picture,
        image.stem,
        out,
        resolved["model"]["class_names"],
        resolved["data"]["eval_min_size"],
        resolved["data"]["eval_max_size"],
        decoder_layer,
        top,
        pixel,
        encoder_layer,
    )
    print_line(
        f"decoder layer {result.decoder_layer} of {result.decoder_layers}, the top "
        f"{len(result.detections)} detections:"
    )
    for detection in result.detections:
        print_line(
            f"query {detection['query']} ({detection['name']}, score "
            f"{detection['score']:.2f}): {detection['picture']}"
        )
    if pixel is not None:
        print_line(
            f"encoder layer {result.encoder_layer} at pixel {pixel[0]} {pixel[1]}: "
            f"{result.paths[-1]}"
        )


@visualize_app.command("curves")
def visualize_curves(
    run: Annotated[
        Path,
        typer.Argument(help="A run folder (or its metrics.jsonl).", show_default=False),
    ],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Folder for curves.png, or a .png path.")
    ] = None,
) -> None:
    """Loss terms, learning rate and val AP over training steps, from a run's metrics.jsonl.

    Examples:
      ddetr visualize curves runs/shapes
      ddetr visualize curves runs/shapes/metrics.jsonl -o curves.png
    """
    from ddetr_cli.viz.curves import curves_picture

    metrics = run / "metrics.jsonl" if run.is_dir() else run
    target = out or metrics.parent / "curves.png"
    path, names = curves_picture(metrics, target)
    Console().print(f"{', '.join(names)}: {path}", highlight=False, soft_wrap=True)


@visualize_app.command("predictions")
@with_slicing
def visualize_predictions(
    images: PicturesAndOverrides,
    weights: Weights,
    recipe: Recipe = None,
    threshold: Threshold = 0.5,
    out: Out = Path("visualize"),
    columns: Annotated[int, typer.Option(help="Pictures per row of the sheet.")] = 4,
    device: Device = "cpu",
    batch_size: BatchSize = 1,
    min_size: MinSize = None,
    max_size: MaxSize = None,
    slicing: Any = None,  # SliceOptions | None, from --slice and its companions (with_slicing)
) -> None:
    """Pictures with their predicted boxes, labels and scores (as `ddetr predict` draws them),
    and one sheet with all of them as thumbnails. --slice as in `ddetr predict`.

    Examples:
      ddetr visualize predictions shapes_coco/val2017 -w runs/shapes -t 0.3
      ddetr visualize predictions photos/ -w checkpoint.pth --recipe refine --min-size 600
      ddetr visualize predictions shapes_small/val2017 -w runs/shapes_small --slice 128 128
    """
    from ddetr_cli.inference.predict import run_predict
    from ddetr_cli.viz.predictions import contact_sheet

    if columns < 1:
        raise UsageError(f"--columns must be at least 1, got {columns}")
    pictures, overrides = split_overrides(images)
    summary = run_predict(
        pictures,
        weights,
        recipe,
        overrides,
        threshold,
        out,
        device,
        batch_size,
        min_size,
        max_size,
        slicing=slicing,
        with_videos=False,
    )
    sheet = contact_sheet(summary.drawn, out / "sheet.png", columns)
    print_line(
        f"{len(summary.drawn)} pictures with {summary.n_detections} detections in {out}/; "
        f"sheet: {sheet}"
    )
    if summary.slicing is not None:
        print_line(f"tiles per picture: {describe_slicing(summary.slicing)}")
    for _path, reason in summary.failures:
        print_line(f"failed: {reason}", stderr, style="red")
    if summary.n_failed:
        raise typer.Exit(EXIT_FAILED)


@visualize_app.command("dataset")
def visualize_dataset(
    recipe: RecipeArgument,
    overrides: Overrides = None,
    count: Annotated[int, typer.Option(help="How many training pictures.")] = 8,
    epoch: Annotated[int, typer.Option(help="Which epoch's augmentation to show.")] = 0,
    out: Out = Path("visualize"),
) -> None:
    """Ground-truth boxes on training pictures as stored (left) and after the recipe's
    augmentation (right), to check annotations and augmentation.

    Examples:
      ddetr visualize dataset recipes/shapes.yaml --count 4
      ddetr visualize dataset recipes/refine.yaml data.root=/data/coco --epoch 3
    """
    from ddetr_cli.recipe import load_recipe
    from ddetr_cli.viz.dataset import dataset_pictures

    if count < 1 or epoch < 0:
        raise UsageError("--count must be at least 1 and --epoch at least 0")
    paths = dataset_pictures(load_recipe(recipe, overrides or []), out, count, epoch)
    print_line(f"{len(paths)} pictures (stored | augmented) in {out}/")
