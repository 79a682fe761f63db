"""Charts drawn with matplotlib (Agg, no display needed): training curves, precision-recall
curves, F1 against the score threshold and the confusion matrix of `ddetr evaluate`.

Figures are built with ``matplotlib.figure.Figure`` rather than pyplot, so nothing global
(backend, open figures) changes and no window ever opens.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ddetr_cli.evaluation.thresholds import ConfusionMatrix

LINE = "#1e5ac8"  # the curves' colour, (30, 90, 200)
PANEL_PIXELS = (360, 220)  # width, height of one training-curve panel
_DPI = 100


def _figure(width_px: float, height_px: float, dpi: int = _DPI) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)  # drawn by Agg whatever pyplot's backend is
    return figure


def _save(figure: Figure, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=figure.dpi, facecolor="white")
    return out


def curves_figure(
    panels: Sequence[tuple[str, Sequence[float], Sequence[float]]], out: Path, columns: int = 3
) -> Path:
    """One small chart per (title, steps, values), ``columns`` to a row, each
    :data:`PANEL_PIXELS` in size; cells past the last panel stay blank."""
    rows = -(-len(panels) // columns)
    figure = _figure(PANEL_PIXELS[0] * columns, PANEL_PIXELS[1] * rows)
    grid = figure.add_gridspec(rows, columns)
    for i, (title, xs, ys) in enumerate(panels):
        axes = figure.add_subplot(grid[i // columns, i % columns])
        marker = "o" if len(xs) <= 30 else None
        axes.plot(xs, ys, color=LINE, linewidth=2, marker=marker, markersize=3.5)
        axes.set_title(title, fontsize=9, loc="left")
        axes.set_xlabel("step", fontsize=8)
        axes.tick_params(labelsize=7)
        axes.grid(True, color="#dddddd", linewidth=0.6)
        axes.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
        axes.yaxis.get_offset_text().set_fontsize(7)
    return _save(figure, out)


def precision_recall_pictures(
    precision: np.ndarray,
    category_ids: Sequence[int],
    class_names: dict[int, str],
    out_dir: Path,
    recall: np.ndarray | None = None,
) -> list[Path]:
    """Precision against recall per class from COCOeval's ``eval["precision"]`` (IoU
    thresholds x recall points x categories x areas x max detections), area all and the last
    max-detections setting (100): one picture at IoU 0.50 and one averaged over 0.50:0.95."""
    recall = np.linspace(0.0, 1.0, precision.shape[1]) if recall is None else recall
    paths = []
    for name, iou_rows, label in (
        ("pr_curve_AP50.png", slice(0, 1), "IoU 0.50"),
        ("pr_curve_AP.png", slice(None), "IoU 0.50:0.95 (mean over IoU thresholds)"),
    ):
        figure = _figure(840, 600, dpi=120)
        axes = figure.add_subplot()
        curves = []
        shown = len(category_ids) <= 20  # a legend entry per class; past that, grey lines
        for k, category in enumerate(category_ids):
            values = precision[iou_rows, :, k, 0, -1]
            if (values < 0).any():  # no ground truth of this class
                continue
            curve = values.mean(0)
            curves.append(curve)
            legend = f"{class_names.get(category, category)} {curve.mean():.3f}"
            if shown:
                axes.plot(recall, curve, linewidth=1.2, label=legend)
            else:
                axes.plot(recall, curve, linewidth=0.6, alpha=0.35, color="grey")
        if curves:
            mean = np.mean(curves, 0)
            axes.plot(
                recall, mean, color="black", linewidth=2.5, label=f"all classes {mean.mean():.3f}"
            )
            axes.legend(fontsize=7, loc="lower left", title="class, AP", title_fontsize=7)
        axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision")
        axes.set_title(f"Precision-recall, {label}, area all, 100 detections", fontsize=10)
        axes.grid(True, color="#dddddd", linewidth=0.6)
        paths.append(_save(figure, out_dir / name))
    return paths


def f1_picture(sweep: Sequence[dict[str, float]], score_threshold: float, out: Path) -> Path:
    """Precision, recall and F1 against the score threshold, marking the best F1 and the
    threshold in use."""
    figure = _figure(840, 540, dpi=120)
    axes = figure.add_subplot()
    xs = [s["score_threshold"] for s in sweep]
    for key, colour in (("precision", "#2ca02c"), ("recall", "#ff7f0e"), ("f1", LINE)):
        axes.plot(
            xs,
            [s[key] for s in sweep],
            color=colour,
            linewidth=2 if key == "f1" else 1.3,
            marker="o",
            markersize=3,
            label=key,
        )
    best = max(sweep, key=lambda s: s["f1"])
    axes.axvline(
        best["score_threshold"],
        color=LINE,
        linestyle=":",
        linewidth=1,
        label=f"best F1 {best['f1']:.3f} at {best['score_threshold']:.2f}",
    )
    axes.axvline(
        score_threshold,
        color="grey",
        linestyle="--",
        linewidth=1,
        label=f"--threshold {score_threshold:g}",
    )
    axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="score threshold", ylabel="value")
    axes.set_title("Precision, recall and F1 against the score threshold", fontsize=10)
    axes.legend(fontsize=8)
    axes.grid(True, color="#dddddd", linewidth=0.6)
    return _save(figure, out)


def confusion_matrix_picture(confusion: ConfusionMatrix, out: Path, title: str = "") -> Path:
    """The confusion matrix: colour = share of the row (of each ground-truth class's boxes, or
    of the background detections), numbers = counts."""
    matrix = confusion.matrix.astype(float)
    size = len(confusion.labels)
    side = min(40.0, max(6.0, 0.45 * size + 2.5))
    figure = _figure(side * 100, side * 100 * 0.9)
    axes = figure.add_subplot()
    totals = matrix.sum(1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, shrink=0.8, label="share of the row")
    if size <= 40:
        for (row, column), count in np.ndenumerate(confusion.matrix):
            if count:
                colour = "white" if shares[row, column] > 0.6 else "black"
                axes.text(
                    column,
                    row,
                    str(count),
                    ha="center",
                    va="center",
                    color=colour,
                    fontsize=8 if size <= 20 else 6,
                )
    axes.set_xticks(range(size), confusion.labels, rotation=45, ha="right", fontsize=8)
    axes.set_yticks(range(size), confusion.labels, fontsize=8)
    axes.set_xlabel("predicted")
    axes.set_ylabel("ground truth")
    axes.set_title(title or "Confusion matrix", fontsize=10)
    return _save(figure, out)


def evaluation_pictures(report: Any, out_dir: Path) -> list[Path]:
    """The pictures of an evaluation report (``ddetr_cli.evaluation.evaluate.EvaluationReport``):
    precision-recall curves when COCOeval ran, and with threshold metrics the confusion
    matrix and the F1 sweep."""
    out_dir = Path(out_dir)
    paths: list[Path] = []
    if getattr(report, "precision", None) is not None:
        paths += precision_recall_pictures(
            report.precision, list(report.per_class), report.class_names, out_dir
        )
    at = getattr(report, "at_threshold", None)
    if at is not None:
        title = f"Confusion matrix: score >= {at.score_threshold:g}, IoU >= {at.iou_threshold:g}"
        paths.append(
            confusion_matrix_picture(at.confusion, out_dir / "confusion_matrix.png", title)
        )
        if at.sweep:
            paths.append(f1_picture(at.sweep, at.score_threshold, out_dir / "f1_curve.png"))
    return paths
