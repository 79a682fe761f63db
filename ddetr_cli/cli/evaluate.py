"""``ddetr evaluate``: COCO box AP as pycocotools gives it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ddetr_cli.cli.console import print_line, stderr, stdout
from ddetr_cli.cli.options import (
    BatchSize,
    Device,
    JsonOut,
    OptionalWeights,
    Out,
    Overrides,
    Recipe,
    describe_slicing,
    with_slicing,
)
from ddetr_cli.errors import DdetrError, UsageError

# Confusion matrices with more rows than this go to --json and --plots only.
_CONFUSION_PRINT_MAX = 16

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


# The options of `ddetr evaluate` alone.
Images = Annotated[
    Path | None, typer.Option(help="Pictures folder (instead of the recipe's val split).")
]
Annotations = Annotated[
    Path | None, typer.Option(help="COCO annotations JSON of --images, or of --predictions.")
]
Predictions = Annotated[
    Path | None, typer.Option(help="Score this COCO results file instead of running a model.")
]
ScoreThreshold = Annotated[
    float | None,
    typer.Option(
        "--threshold",
        "-t",
        help="Also precision, recall, F1 and the confusion matrix of the detections scoring "
        "at least this (0 to 1).",
        show_default=False,
    ),
]
Iou = Annotated[
    float,
    typer.Option(
        "--iou", help="IoU at which a detection matches a box, for --threshold (0.05 to 1)."
    ),
]
Plots = Annotated[
    bool,
    typer.Option(
        "--plots",
        help="Write precision-recall curves (with --threshold also the confusion matrix and the "
        "F1 curve) as PNG pictures in --out.",
    ),
]


@with_slicing
def evaluate(
    overrides: Overrides = None,
    weights: OptionalWeights = None,
    recipe: Recipe = None,
    images: Images = None,
    annotations: Annotations = None,
    predictions: Predictions = None,
    batch_size: BatchSize = 1,
    device: Device = "cpu",
    out: Out = Path("evaluation"),
    json_out: JsonOut = None,
    threshold: ScoreThreshold = None,
    iou: Iou = 0.5,
    plots: Plots = False,
    slicing: Any = None,  # SliceOptions | None, from --slice and its companions (with_slicing)
) -> None:
    """COCO box AP (pycocotools' COCOeval): the 12 summary numbers and per-class AP.

    With --weights, runs the model on the recipe's val split (or --images with --annotations)
    at the evaluation transform and saves its detections; with --predictions, scores an existing
    COCO results file against --annotations, exactly as pycocotools does. A picture that cannot
    be read is named and scored as a picture with no detections (its boxes still count), and the
    exit status is 1. With --slice (and --weights), each picture is cut into overlapping tiles
    seen at their own resolution, and the merged boxes are scored on the original pictures.
    When a picture has more than COCOeval's 100 detections of a class, the numbers counting
    every detection follow the standard ones.

    Examples:
      ddetr evaluate -w runs/shapes/checkpoint_best.pth
      ddetr evaluate -w r50_deformable_detr.pth data.root=/data/coco --batch-size 2
      ddetr evaluate --predictions results.json --annotations instances_val2017.json
      ddetr evaluate -w runs/shapes/checkpoint_best.pth -t 0.5 --plots -o eval/
      ddetr evaluate -w runs/shapes_small --images shapes_small/val2017 \\
        --annotations shapes_small/annotations/instances_val2017.json --slice 128 128 -b 16
    """
    from ddetr_cli.evaluation.evaluate import evaluate_checkpoint, score_predictions
    from ddetr_cli.files import write_json

    if threshold is not None and not 0 <= threshold <= 1:
        raise UsageError(f"--threshold must be between 0 and 1, got {threshold:g}")
    if not 0.05 <= iou <= 1:
        raise UsageError(f"--iou must be between 0.05 and 1, got {iou:g}")
    if predictions is not None:
        if weights is not None or annotations is None:
            raise UsageError("--predictions needs --annotations, and no --weights")
        if slicing is not None:
            raise UsageError("--slice runs a model: give --weights, not --predictions")
        report = score_predictions(predictions, annotations)
    elif weights is None:
        raise UsageError("give --weights CHECKPOINT (or --predictions with --annotations)")
    else:
        report = evaluate_checkpoint(
            weights, recipe, overrides or [], images, annotations, batch_size, device, out, slicing
        )
        if report is None:  # a torchrun process other than 0: process 0 reports
            return
    _print_report(report)
    if threshold is not None:
        _print_threshold_metrics(report.add_threshold_metrics(threshold, iou))
    if plots:
        from ddetr_cli.viz.plots import evaluation_pictures

        for path in evaluation_pictures(report, out):
            print_line(f"plot: {path}")
    for note in report.notes:
        print_line(f"note: {note}")
    if predictions is None:
        print_line(f"detections: {report.detections_path}")
    if json_out is not None:
        write_json(report.to_json(), json_out, indent=2)
        print_line(f"metrics: {json_out}")
    _fail_on_unreadable(report)


def _fail_on_unreadable(report: Any) -> None:
    """Name every picture that could not be read, then exit 1: the numbers above are right for
    the data as it is (those pictures have no detections), but the data needs fixing."""
    if not report.unreadable:
        return
    for why in report.unreadable.values():
        print_line(f"unreadable: {why}", stderr, style="red")
    raise DdetrError(
        f"{len(report.unreadable)} of {report.num_images} pictures could not be read; the "
        "numbers above count them as pictures with no detections"
    )


def _print_report(report: Any) -> None:
    """The 12 COCOeval numbers and the AP of each class, as tables; then, when a picture has
    more than 100 detections of a class, the numbers counting all, and how pictures were
    sliced."""
    summary = Table(
        title=f"COCO box AP ({report.num_images} pictures, {report.num_detections} detections)",
        title_justify="left",
    )
    for column in ("", "value", "what (pycocotools)"):
        summary.add_column(column, justify="right" if column == "value" else "left")
    for (name, value), what in zip(report.stats.items(), _MEANINGS, strict=True):
        # pycocotools' -1: no ground truth in that size range.
        summary.add_row(name, "n/a" if value < 0 else f"{value:.3f}", what)
    stdout.print(summary)
    per_class = Table(title="AP per class", title_justify="left")
    for column in ("category_id", "name", "AP"):
        per_class.add_column(column, justify="right" if column != "name" else "left")
    for category, ap in report.per_class.items():
        name = report.class_names.get(category, str(category))
        per_class.add_row(str(category), name, "-" if ap is None else f"{ap:.3f}")
    stdout.print(per_class)
    if report.every_detection is not None:
        _print_every_detection(report)
    if report.slicing is not None:
        s = report.slicing
        print_line(f"sliced: {describe_slicing(s)}; {s['seconds_per_picture']:.3f} s per picture")


def _print_every_detection(report: Any) -> None:
    """The numbers again, counting every detection, beside the standard ones."""
    every = report.every_detection
    print_line(
        f"note: {every.pictures_over_limit} of {report.num_images} pictures have more than "
        "100 detections of a class; COCOeval, above, counts the best 100 of each"
    )
    table = Table(title="COCO box AP counting every detection", title_justify="left")
    for column in ("", "maxDets 100", f"maxDets {every.max_dets}"):
        table.add_column(column, justify="right" if column else "left")
    for name, value in every.stats.items():
        label = f"AR100 / AR{every.max_dets}" if name == "AR100" else name
        standard = report.stats[name]
        table.add_row(label, *("n/a" if v < 0 else f"{v:.3f}" for v in (standard, value)))
    stdout.print(table)


def _print_threshold_metrics(at: Any) -> None:
    """The precision / recall / F1 table and the confusion matrix of ``ddetr evaluate -t``."""
    title = f"Detections scoring >= {at.score_threshold:g}, matched at IoU >= {at.iou_threshold:g}"
    table = Table(title=title, title_justify="left")
    for column in ("class", "TP", "FP", "FN", "precision", "recall", "F1"):
        table.add_column(column, justify="left" if column == "class" else "right")

    def row(name: str, counts: Any, **style: Any) -> None:
        table.add_row(
            name,
            str(counts.tp),
            str(counts.fp),
            str(counts.fn),
            f"{counts.precision:.3f}",
            f"{counts.recall:.3f}",
            f"{counts.f1:.3f}",
            **style,
        )

    for category, counts in at.per_class.items():
        row(at.class_names.get(category, str(category)), counts)
    row("all", at.overall, end_section=True, style="bold")
    stdout.print(table)
    best = at.best_f1
    if best is not None:
        print_line(
            f"best F1 {best['f1']:.3f} at score >= {best['score_threshold']:g} "
            f"(precision {best['precision']:.3f}, recall {best['recall']:.3f})"
        )
    labels, matrix = at.confusion.labels, at.confusion.matrix
    if len(labels) > _CONFUSION_PRINT_MAX:
        print_line(f"confusion matrix: {len(labels)} x {len(labels)}, in --json and --plots")
        return
    print_line("Confusion matrix (rows: ground truth, columns: predicted)")
    confusion = Table()
    confusion.add_column("")
    for label in labels:
        confusion.add_column(label, justify="right")
    for label, counts in zip(labels, matrix.tolist(), strict=True):
        confusion.add_row(label, *(str(c) if c else "." for c in counts))
    stdout.print(confusion)
