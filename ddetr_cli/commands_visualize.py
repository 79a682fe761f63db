"""The ``ddetr visualize`` group (registered in cli.py): pictures that explain the model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ddetr_cli.cli_args import Overrides

visualize_app = typer.Typer(
    help="Pictures that explain the model: where deformable attention samples.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)


@visualize_app.command("attention")
def visualize_attention(
    image: Annotated[Path, typer.Argument(help="The picture.", show_default=False)],
    weights: Annotated[
        Path, typer.Option("--weights", "-w", help="Checkpoint (ddetr or official .pth).")
    ],
    recipe: Annotated[
        Path | None, typer.Option("--recipe", "-r", help="Recipe (default: the checkpoint's).")
    ] = None,
    top: Annotated[int, typer.Option(help="How many top-scoring detections to draw.")] = 5,
    decoder_layer: Annotated[
        int, typer.Option(help="Decoder layer whose cross-attention is drawn (-1: the last).")
    ] = -1,
    pixel: Annotated[
        tuple[int, int] | None,
        typer.Option(help="Also draw what the encoder samples for this picture pixel: X Y."),
    ] = None,
    encoder_layer: Annotated[
        int, typer.Option(help="Encoder layer for --pixel (-1: the last).")
    ] = -1,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the pictures.")] = Path(
        "visualize"
    ),
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
) -> None:
    """Deformable attention's sampling points for the top detections, on every feature level
    (colour = level, size and opacity = attention weight), with each query's reference point
    (white cross) and predicted box; optionally the encoder's points for one pixel.

    Examples:
      ddetr visualize attention photo.jpg -w checkpoint.pth
      ddetr visualize attention photo.jpg -w checkpoint.pth --top 3 --decoder-layer 0
      ddetr visualize attention photo.jpg -w checkpoint.pth --pixel 320 240
    """
    from ddetr_cli.checkpoint import load_model
    from ddetr_cli.cli import usage_error
    from ddetr_cli.config import load_recipe
    from ddetr_cli.images import load_image
    from ddetr_cli.predict import resolve_device
    from ddetr_cli.visualize import attention_pictures

    if top < 1:
        raise usage_error(f"--top must be at least 1, got {top}")
    picture = load_image(image)
    resolved = load_recipe(recipe) if recipe is not None else None
    model, resolved = load_model(weights, resolved, device=str(resolve_device(device)))
    result = attention_pictures(
        model, picture, image.stem, out, resolved["model"]["class_names"],
        resolved["data"]["eval_min_size"], resolved["data"]["eval_max_size"], decoder_layer, top,
        pixel, encoder_layer,
    )  # fmt: skip
    console = Console()
    for detection in result.detections:
        console.print(
            f"query {detection['query']} (class {detection['label']}, score "
            f"{detection['score']:.2f}): {detection['picture']}",
            highlight=False,
            soft_wrap=True,
        )
    if pixel is not None:
        where = f"encoder at pixel {pixel[0]} {pixel[1]}: {result.paths[-1]}"
        console.print(where, highlight=False, soft_wrap=True)


@visualize_app.command("curves")
def visualize_curves(
    run: Annotated[
        Path,
        typer.Argument(help="A run folder (or its metrics.jsonl).", show_default=False),
    ],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="PNG to write (default RUN/curves.png).")
    ] = None,
) -> None:
    """Loss terms, learning rate and val AP over training steps, from a run's metrics.jsonl.

    Examples:
      ddetr visualize curves runs/shapes
      ddetr visualize curves runs/shapes/metrics.jsonl -o curves.png
    """
    from ddetr_cli.visualize import curves_picture

    metrics = run / "metrics.jsonl" if run.is_dir() else run
    target = out or metrics.parent / "curves.png"
    path, names = curves_picture(metrics, target)
    Console().print(f"{', '.join(names)}: {path}", highlight=False, soft_wrap=True)


@visualize_app.command("predictions")
def visualize_predictions(
    images: Annotated[
        list[Path], typer.Argument(help="Pictures and/or folders.", show_default=False)
    ],
    weights: Annotated[
        Path, typer.Option("--weights", "-w", help="Checkpoint (ddetr or official .pth).")
    ],
    threshold: Annotated[float, typer.Option("--threshold", "-t", help="Minimum score.")] = 0.5,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the pictures.")] = Path(
        "visualize"
    ),
    columns: Annotated[int, typer.Option(help="Pictures per row of the sheet.")] = 4,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
) -> None:
    """Pictures with their predicted boxes, labels and scores (as `ddetr predict` draws them),
    and one sheet with all of them as thumbnails.

    Examples:
      ddetr visualize predictions shapes_coco/val2017 -w runs/shapes/checkpoint_best.pth -t 0.3
    """
    from ddetr_cli.cli import usage_error
    from ddetr_cli.images import list_images
    from ddetr_cli.predict import output_names, run_predict
    from ddetr_cli.visualize import contact_sheet

    if columns < 1:
        raise usage_error(f"--columns must be at least 1, got {columns}")
    summary = run_predict(images, weights, threshold=threshold, out_dir=out, device=device)
    drawn = [out / name for name in output_names(list_images(images)) if (out / name).is_file()]
    sheet = contact_sheet(drawn, out / "sheet.png", columns)
    Console().print(
        f"{len(drawn)} pictures with {summary.n_detections} detections in {out}/; sheet: {sheet}",
        highlight=False,
        soft_wrap=True,
    )
    if summary.n_failed:
        raise typer.Exit(1)


@visualize_app.command("dataset")
def visualize_dataset(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.", show_default=False)],
    overrides: Overrides = None,
    count: Annotated[int, typer.Option(help="How many training pictures.")] = 8,
    epoch: Annotated[int, typer.Option(help="Which epoch's augmentation to show.")] = 0,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the pictures.")] = Path(
        "visualize"
    ),
) -> None:
    """Ground-truth boxes on training pictures as stored (left) and after the recipe's
    augmentation (right), to check annotations and augmentation.

    Examples:
      ddetr visualize dataset recipes/shapes.yaml --count 4
      ddetr visualize dataset recipes/refine.yaml data.root=/data/coco --epoch 3
    """
    from ddetr_cli.cli import usage_error
    from ddetr_cli.config import load_recipe
    from ddetr_cli.visualize import dataset_pictures

    if count < 1 or epoch < 0:
        raise usage_error("--count must be at least 1 and --epoch at least 0")
    paths = dataset_pictures(load_recipe(recipe, overrides or []), out, count, epoch)
    Console().print(f"{len(paths)} pictures (stored | augmented) in {out}/", highlight=False,
                    soft_wrap=True)  # fmt: skip
