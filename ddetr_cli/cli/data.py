"""The ``ddetr data`` group: check a dataset, convert it to COCO, write the built-in shapes.

Registered in ``cli/__init__.py`` as ``app.add_typer(data_app, name="data")``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ddetr_cli.cli.console import group, print_line
from ddetr_cli.cli.options import JsonOut, Overrides
from ddetr_cli.errors import DdetrError, UsageError

data_app = group(
    "Datasets: check your own (COCO, Roboflow, YOLO, Pascal VOC), convert one to COCO, cut one "
    "into tiles, write the built-in shapes."
)

Target = Annotated[
    Path,
    typer.Argument(help="A dataset folder (data.root) or a recipe file.", show_default=False),
]


def _every_split(source: Path, overrides: list[str] | None) -> Any:
    """The train, val and test splits ``source`` has (a ``DataSource``), none required."""
    from ddetr_cli.data.check import recipe_for
    from ddetr_cli.data.sources import load_source

    recipe = recipe_for(source, overrides or [])
    return load_source(
        recipe["data"],
        recipe["model"]["class_names"],
        ("train", "val", "test"),
        require_train=False,
    )


@data_app.command("check")
def data_check(
    target: Target,
    overrides: Overrides = None,
    json_out: JsonOut = None,
    decode: Annotated[
        bool, typer.Option(help="Decode every picture (--no-decode: only look for the files).")
    ] = True,
) -> None:
    """Report what a dataset holds and every problem training would skip or refuse.

    Prints the format found, per split the pictures, boxes, boxes per class and COCO's
    small / medium / large counts, then each problem on one line naming its file. Exit status
    1 when there is any problem. A data set is checked as what it has: a note says when it
    has no val (or no train) split. A relative DIR is relative to the current folder.

    Examples:
      ddetr data check datasets/mine
      ddetr data check recipes/mine.yaml model.class_names=[cat,dog]
      ddetr data check datasets/voc data.format=voc --json check.json
    """
    from ddetr_cli.data.check import check_data, recipe_for
    from ddetr_cli.files import write_json

    report = check_data(recipe_for(target, overrides or []), decode=decode)
    for line in report.lines():
        print_line(line)
    if json_out is not None:
        write_json(report.to_dict(), json_out)
    if not report.ok:
        raise typer.Exit(1)


@data_app.command("convert")
def data_convert(
    source: Target,
    out_dir: Annotated[Path, typer.Argument(help="Folder to write.", show_default=False)],
    overrides: Overrides = None,
    to: Annotated[str, typer.Option("--to", help="Output format (coco).")] = "coco",
    copy: Annotated[
        bool, typer.Option("--copy", help="Copy the pictures (default: hard links).")
    ] = False,
) -> None:
    """Write any dataset (COCO, Roboflow, YOLO, VOC) as a COCO folder in the standard layout.

    OUT_DIR gets {train,val,test}2017/ (the pictures, hard-linked where possible) and
    annotations/instances_{split}2017.json with the class indices as category ids. Prints
    what it wrote of what it read per split; exit status 1 when it wrote fewer pictures or
    boxes than it read, or skipped anything (each listed), or wrote nothing.

    Examples:
      ddetr data convert datasets/yolo datasets/yolo_coco --to coco
    """
    from ddetr_cli.data.convert import conversion_shortfall, write_coco

    if to != "coco":
        raise UsageError(f"--to: only coco is written, got {to!r}")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DdetrError(f"{out_dir}: exists and is not empty")
    data = _every_split(source, overrides)
    written = write_coco(data, out_dir, link=not copy)
    for problem in data.problems:
        print_line(f"skipped: {problem}")
    for split, w in written.items():
        print_line(
            f"{split}: {w.pictures} of {w.pictures_read} pictures, {w.boxes} of "
            f"{w.boxes_read} boxes -> {w.annotations}"
        )
    shortfall = conversion_shortfall(data, written)
    if shortfall is not None:
        raise DdetrError(shortfall)


@data_app.command("shapes")
def data_shapes(
    out_dir: Annotated[
        Path | None, typer.Argument(help="Folder to write.", show_default=False)
    ] = None,
    train_count: Annotated[int, typer.Option("--train", help="Training pictures.", min=0)] = 2000,
    val_count: Annotated[
        int, typer.Option("--val", help="Val pictures (of the fixed val split).", min=0)
    ] = 200,
    seed: Annotated[
        int, typer.Option(help="Seed of the training pictures (or of the clip).", min=0)
    ] = 0,
    task: Annotated[
        str,
        typer.Option(
            help="shapes3 (3 classes), shapes6 (adds ellipse, star, cross) or small (8-32 px "
            "shapes on cluttered 1024-1536 px pictures, for --slice)."
        ),
    ] = "shapes3",
    force: Annotated[
        bool, typer.Option("--force", help="Replace an earlier set in OUT_DIR.")
    ] = False,
    video: Annotated[
        Path | None,
        typer.Option(help="Write a clip of moving shapes to this MP4 instead.", show_default=False),
    ] = None,
    seconds: Annotated[float, typer.Option(help="--video: the clip's length.")] = 10.0,
    fps: Annotated[int, typer.Option(help="--video: frames per second.")] = 25,
) -> None:
    """Write the built-in shapes pictures as a COCO-format folder (standard COCO layout), or a
    clip of moving shapes (--video).

    The same pictures as `data.format: shapes` uses, so `data.root=OUT_DIR` trains on exactly
    the same data through the COCO reader. An OUT_DIR holding an earlier set is refused unless
    --force, which removes the earlier split folders first. The clip (256x256, H.264; needs
    pip install 'ddetr-cli\\[video]') is the same for the same --seed, for `ddetr predict`.

    Examples:
      ddetr data shapes shapes_coco --train 2000 --val 200
      ddetr train recipes/shapes.yaml data.format=coco data.root=shapes_coco
      ddetr data shapes shapes_small --task small --train 60 --val 20
      ddetr data shapes --video shapes.mp4 --seconds 10
    """
    if (out_dir is None) == (video is None):
        raise UsageError("give either OUT_DIR (pictures) or --video OUT.mp4 (a clip)")
    if video is not None:
        from ddetr_cli.data.shapes_video import write_shapes_video

        frames = write_shapes_video(video, seconds, fps, seed)
        print_line(f"video: {video} ({frames} frames at {fps} frames/s)")
        return
    from rich.progress import Progress

    from ddetr_cli.data.convert import prepare_shapes_folder, write_shapes_coco
    from ddetr_cli.data.shapes import TASKS

    if task not in TASKS:
        raise UsageError(f"--task must be one of {', '.join(TASKS)}, got {task!r}")
    prepare_shapes_folder(out_dir, force)
    with Progress(transient=True) as bar:
        progress = bar.add_task("writing pictures", total=train_count + val_count)
        written = write_shapes_coco(
            out_dir,
            train_count,
            val_count,
            seed,
            on_picture=lambda: bar.advance(progress),
            task=task,
        )
    for split, path in written.items():
        print_line(f"{split}: {path}")


@data_app.command("slice")
def data_slice(
    source: Target,
    out_dir: Annotated[Path, typer.Argument(help="Folder to write.", show_default=False)],
    size: Annotated[
        tuple[int, int],
        typer.Option(metavar="H W", help="Tile height and width in pixels.", show_default=False),
    ],
    overrides: Overrides = None,
    overlap: Annotated[
        float, typer.Option(help="Share of a tile's side that neighbouring tiles overlap, [0, 1).")
    ] = 0.2,
    min_visible: Annotated[
        float,
        typer.Option(help="Keep a box in a tile when at least this share of it is inside."),
    ] = 0.5,
    empty_ratio: Annotated[
        float, typer.Option(help="Empty tiles kept per tile with boxes (0: none), at random.")
    ] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of the choice of empty tiles.")] = 0,
) -> None:
    """Cut any dataset ddetr reads into overlapping tiles, written as a COCO folder.

    Every split is cut with the grid that --slice uses in predict and evaluate; boxes are
    clipped to each tile, a box is left out of a tile when less than --min-visible of it is
    inside, and at most --empty-ratio empty tiles per tile with boxes are kept. OUT_DIR gets
    {split}2017/ and annotations/instances_{split}2017.json (`ddetr data check` reads it).
    Exit status 1 when a picture could not be read; nothing is written when no tile is.

    Examples:
      ddetr data slice shapes_small shapes_small_tiles --size 128 128 --overlap 0.25
      ddetr data slice /data/aerial /data/aerial_tiles --size 640 640 --overlap 0.25
    """
    from rich.progress import Progress

    from ddetr_cli.data.slice import check_slice_options, slice_dataset

    check_slice_options(size, overlap, min_visible, empty_ratio)
    data = _every_split(source, overrides)
    total = sum(len(split.coco["images"]) for split in data.splits.values())
    with Progress(transient=True) as bar:
        task = bar.add_task("cutting pictures", total=total)
        written = slice_dataset(
            data,
            out_dir,
            size,
            overlap,
            min_visible,
            empty_ratio,
            seed,
            on_picture=lambda: bar.advance(task),
        )
    for split, w in written.items():
        print_line(
            f"{split}: {w.pictures} of {w.pictures_read} pictures -> {w.tiles} tiles "
            f"({w.tiles_with_boxes} with boxes, {w.empty_dropped} empty left out); "
            f"{w.boxes} boxes from {w.boxes_read} ({w.boxes_in_no_tile} in no tile) "
            f"-> {w.annotations}"
        )
    problems = [p for w in written.values() for p in w.problems]
    for problem in problems:
        print_line(f"skipped: {problem}")
    if problems:
        raise DdetrError(f"{len(problems)} pictures could not be read")
