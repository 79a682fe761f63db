"""The ``ddetr evaluate`` command (registered in cli.py): COCO box AP as pycocotools gives it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ddetr_cli.cli_args import Overrides
from ddetr_cli.errors import DdetrError

# What each of COCOeval.summarize()'s 12 numbers is, in its order.
_MEANINGS = [
    f"{kind} IoU={iou} area={area} maxDets={dets}"
    for kind, iou, area, dets in (
        ("AP", "0.50:0.95", "all", 100), ("AP", "0.50", "all", 100), ("AP", "0.75", "all", 100),
        ("AP", "0.50:0.95", "small", 100), ("AP", "0.50:0.95", "medium", 100),
        ("AP", "0.50:0.95", "large", 100), ("AR", "0.50:0.95", "all", 1),
        ("AR", "0.50:0.95", "all", 10), ("AR", "0.50:0.95", "all", 100),
        ("AR", "0.50:0.95", "small", 100), ("AR", "0.50:0.95", "medium", 100),
        ("AR", "0.50:0.95", "large", 100),
    )
]  # fmt: skip


def evaluate(
    overrides: Overrides = None,
    weights: Annotated[
        Path | None,
        typer.Option("--weights", "-w", help="Checkpoint to evaluate (ddetr or official .pth)."),
    ] = None,
    recipe: Annotated[
        Path | None,
        typer.Option("--recipe", "-r", help="Recipe YAML (default: the checkpoint's own)."),
    ] = None,
    images: Annotated[
        Path | None, typer.Option(help="Pictures folder (instead of the recipe's val split).")
    ] = None,
    annotations: Annotated[
        Path | None, typer.Option(help="COCO annotations JSON of --images, or of --predictions.")
    ] = None,
    predictions: Annotated[
        Path | None,
        typer.Option(help="Score this COCO results file instead of running a model."),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Pictures per batch.")] = 1,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for detections.json (COCO results).")
    ] = Path("evaluation"),
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the metrics and per-class AP here.")
    ] = None,
) -> None:
    """COCO box AP (pycocotools' COCOeval): the 12 summary numbers and per-class AP.

    With --weights, runs the model on the recipe's val split (or --images with --annotations)
    at the evaluation transform and saves its detections; with --predictions, scores an existing
    COCO results file against --annotations, exactly as pycocotools does.

    Examples:
      ddetr evaluate -w runs/shapes/checkpoint_best.pth
      ddetr evaluate -w r50_deformable_detr.pth data.root=/data/coco --batch-size 2
      ddetr evaluate --predictions results.json --annotations instances_val2017.json
    """
    from ddetr_cli.evaluate import evaluate_checkpoint, score_predictions
    from ddetr_cli.io import write_json

    if predictions is not None:
        if weights is not None or annotations is None:
            raise DdetrError("--predictions needs --annotations, and no --weights")
        report = score_predictions(predictions, annotations)
    elif weights is None:
        raise DdetrError("give --weights CHECKPOINT (or --predictions with --annotations)")
    else:
        report = evaluate_checkpoint(weights, recipe, overrides or [], images, annotations,
                                     batch_size, device, out)  # fmt: skip
        if report is None:  # a torchrun process other than 0: process 0 reports
            return
    console = Console()
    summary = Table(title=f"COCO box AP ({report.num_images} pictures, "
                    f"{report.num_detections} detections)", title_justify="left")  # fmt: skip
    for column in ("", "value", "what (pycocotools)"):
        summary.add_column(column, justify="right" if column == "value" else "left")
    for (name, value), what in zip(report.stats.items(), _MEANINGS, strict=True):
        summary.add_row(name, f"{value:.3f}", what)
    console.print(summary)
    per_class = Table(title="AP per class", title_justify="left")
    for column in ("category_id", "name", "AP"):
        per_class.add_column(column, justify="right" if column != "name" else "left")
    for category, ap in report.per_class.items():
        name = report.class_names.get(category, str(category))
        per_class.add_row(str(category), name, "-" if ap is None else f"{ap:.3f}")
    console.print(per_class)
    if predictions is None:
        console.print(f"detections: {report.detections_path}", highlight=False, soft_wrap=True)
    if json_out is not None:
        write_json(report.to_json(), json_out, indent=2)
        console.print(f"metrics: {json_out}", highlight=False, soft_wrap=True)
